"""The blob store: one narrow interface for the bytes of blobs and upload sessions.

Metadata (which repository links which blob, manifests, tags) lives in SQL (``registry.meta``);
a store only holds bytes named by digest, plus the data of uploads in progress. A blob becomes
visible under its digest only after its bytes were verified against that digest, so a crash can
never leave a partial or wrong blob behind a digest.

Backends: ``filesystem`` (the embedded default). An object-store backend implements the same
methods and may answer :meth:`BlobStore.redirect_url` with a presigned URL.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from formats.digest import Digest


class StorageError(Exception):
    """Base class of the store's errors."""


class BlobNotFound(StorageError):
    pass


class UploadNotFound(StorageError):
    pass


class OffsetMismatch(StorageError):
    """A chunk that does not start where the upload currently ends."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"chunk starts at {got}, but the upload has {expected} bytes")
        self.expected = expected
        self.got = got


class IncompleteChunk(StorageError):
    """The body ended before the declared length (the client went away); nothing was kept."""


class OversizedChunk(StorageError):
    """The body carried more bytes than the declared length; nothing was kept."""


class DigestMismatch(StorageError):
    def __init__(self, expected: Digest, actual: Digest) -> None:
        super().__init__(f"content has digest {actual}, not {expected}")
        self.expected = expected
        self.actual = actual


class SizeMismatch(StorageError):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"content is {actual} bytes, not {expected}")
        self.expected = expected
        self.actual = actual


CHUNK_SIZE = 16 * 1024 * 1024  # the granularity of the chunksums API


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    # sha256 hex of each CHUNK_SIZE chunk, when the store computed them (on commit).
    chunk_sums: tuple[str, ...] = ()


class ContentHash:
    """The sha256 of a stream and of each ``CHUNK_SIZE`` chunk of it, fed as bytes arrive."""

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self.size = 0
        self.chunks: list[str] = []
        self._whole = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._in_chunk = 0

    def update(self, data: bytes | memoryview) -> None:
        self.update_whole(data)
        self.update_chunks(data)

    # The two halves of ``update``, which may run in two threads at once (one call of each per
    # piece of data, in order): two passes of sha256 cost twice one.
    def update_whole(self, data: bytes | memoryview) -> None:
        self._whole.update(data)
        self.size += len(data)

    def update_chunks(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.chunk_size - self._in_chunk)
            self._chunk.update(view[:take])
            self._in_chunk += take
            view = view[take:]
            if self._in_chunk == self.chunk_size:
                self.chunks.append(self._chunk.hexdigest())
                self._chunk = hashlib.sha256()
                self._in_chunk = 0

    def copy(self) -> ContentHash:
        other = ContentHash(self.chunk_size)
        other.size, other.chunks, other._in_chunk = self.size, list(self.chunks), self._in_chunk
        other._whole, other._chunk = self._whole.copy(), self._chunk.copy()
        return other

    def digest(self) -> Digest:
        return Digest(self._whole.hexdigest())

    def chunk_sums(self) -> tuple[str, ...]:
        tail = [self._chunk.hexdigest()] if self._in_chunk else []
        return (*self.chunks, *tail)


@dataclass(frozen=True, slots=True)
class UploadInfo:
    upload_id: str
    size: int
    modified: float  # unix time of the last write


class BlobStore(Protocol):
    """What every backend provides. All methods are safe to call from several processes."""

    async def stat(self, digest: Digest) -> BlobInfo:
        """Size of a committed blob; raises BlobNotFound."""
        ...

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes (all remaining if None) from ``offset``; raises BlobNotFound."""
        ...

    async def delete(self, digest: Digest) -> None:
        """Remove a blob's bytes; a missing blob is not an error."""
        ...

    def list(self) -> AsyncIterator[BlobInfo]:
        """Every committed blob."""
        ...

    async def redirect_url(self, digest: Digest, expires_in: int) -> str | None:
        """A URL serving the blob's bytes without credentials, or None to serve them ourselves."""
        ...

    async def start_upload(self, upload_id: str) -> None: ...

    async def upload_size(self, upload_id: str) -> int:
        """Bytes received so far; raises UploadNotFound."""
        ...

    async def append_upload(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], length: int | None) -> int:
        """Append a chunk that must start at ``offset``; returns the new size.

        With a declared ``length`` the chunk is all or nothing: a short or long body leaves the
        upload as it was (so the same chunk can be sent again). Without one, whatever arrived
        is kept."""
        ...

    async def commit_upload(self, upload_id: str, digest: Digest, size: int | None = None) -> BlobInfo:
        """Verify the upload's bytes against ``digest`` and publish them under it.

        On DigestMismatch or SizeMismatch the upload is discarded and nothing is published."""
        ...

    async def abort_upload(self, upload_id: str) -> None:
        """Discard an upload's data; a missing upload is not an error."""
        ...

    def list_uploads(self) -> AsyncIterator[UploadInfo]: ...


async def put_blob(
    store: BlobStore, upload_id: str, digest: Digest, chunks: AsyncIterator[bytes], length: int | None
) -> BlobInfo:
    """Store a whole blob in one go (a monolithic upload)."""
    await store.start_upload(upload_id)
    try:
        await store.append_upload(upload_id, 0, chunks, length)
        return await store.commit_upload(upload_id, digest, length)
    except BaseException:
        await store.abort_upload(upload_id)
        raise


def open_store(data_dir: Path) -> BlobStore:
    """The store configured for a registry; for now always the local filesystem."""
    from registry.storage.filesystem import FilesystemStore

    return FilesystemStore(data_dir)
