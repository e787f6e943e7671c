"""The blob store: backends behind one narrow interface, with verification above them all.

Metadata (which repository links which blob, manifests, tags) lives in SQL (``registry.meta``);
a store only holds bytes named by digest, plus the data of uploads in progress. A blob becomes
visible under its digest only after its bytes were verified against that digest, so a crash can
never leave a partial or wrong blob behind a digest.

- ``base``: the ``BlobStore`` protocol every backend implements, and the errors;
- ``verify``: ``VerifiedStore``, hashing and verification above every backend (what the app uses);
- backends: ``filesystem`` (the embedded default), ``memory`` (tests), ``s3`` (object stores).

``open_store(url)`` makes the store a ``--storage`` URL names.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from registry.storage.base import (
    CHUNK_SIZE,
    BlobBeingCollected,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    DigestMismatch,
    EtagMismatch,
    IncompleteChunk,
    OffsetMismatch,
    OversizedChunk,
    SizeMismatch,
    StorageError,
    StorageUnavailable,
    UploadInfo,
    UploadModeConflict,
    UploadNotFound,
)
from registry.storage.verify import Claim, ContentHash, Release, VerifiedStore, put_blob

__all__ = [
    "CHUNK_SIZE",
    "BlobBeingCollected",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "Claim",
    "ContentHash",
    "DigestMismatch",
    "EtagMismatch",
    "IncompleteChunk",
    "OffsetMismatch",
    "OversizedChunk",
    "Release",
    "SizeMismatch",
    "StorageError",
    "StorageUnavailable",
    "UploadInfo",
    "UploadModeConflict",
    "UploadNotFound",
    "VerifiedStore",
    "open_store",
    "put_blob",
]


def open_store(location: str | Path, data_dir: Path | None = None) -> VerifiedStore:
    """The store for a ``--storage`` URL, or for a data directory given as a path (the default).

    ``file:///srv/hangar/blobs`` keeps blobs under that folder (``sha256/<ab>/<hex>``) and uploads
    beside them in ``_uploads/``; the default, ``DATA_DIR/blobs``, keeps uploads in
    ``DATA_DIR/uploads`` as it always did. ``s3://BUCKET[/PREFIX]`` is an S3-compatible bucket
    (``registry.storage.s3``); ``memory://`` lives in the process (tests only)."""
    from registry.storage.filesystem import FilesystemStore

    if isinstance(location, Path):
        return VerifiedStore(FilesystemStore(location / "blobs", uploads_dir=location / "uploads"))
    url = urlsplit(location)
    if url.scheme == "file":
        blobs = Path(unquote(url.path)).expanduser().resolve()
        if data_dir is not None and blobs == (data_dir / "blobs").resolve():
            return open_store(data_dir)
        return VerifiedStore(FilesystemStore(blobs))
    if url.scheme == "s3":
        from registry.storage.s3 import S3Store

        return VerifiedStore(S3Store.from_url(location))
    if url.scheme == "memory":
        from registry.storage.memory import MemoryStore

        return VerifiedStore(MemoryStore())
    raise ValueError(f"unknown storage URL {location!r}: use file:///PATH or s3://BUCKET[/PREFIX]")
