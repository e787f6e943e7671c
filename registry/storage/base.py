"""The backend seam: the ``BlobStore`` protocol every blob store implements, and the store's errors.

A backend only moves bytes: committed blobs named by digest, and the data of upload sessions in
progress. It never hashes; ``registry.storage.verify`` does that once, above every backend, and
publishes an upload under a digest only after its bytes were verified against it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from formats.digest import Digest

CHUNK_SIZE = 16 * 1024 * 1024  # the granularity of the chunksums API


class StorageError(Exception):
    """Base class of the store's errors; the app maps each to an OCI error (registry.app)."""


class BlobNotFound(StorageError):
    pass


class UploadNotFound(StorageError):
    pass


class OffsetMismatch(StorageError):
    """A chunk that does not start where the upload currently ends."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"chunk starts at byte {got}, but the upload has {expected} bytes")
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


class UploadModeConflict(StorageError):
    """A chunk the session cannot take this way (its parts go straight to the object store, or
    a part that does not fit the layout they started with)."""


class EtagMismatch(StorageError):
    """The client's S3-style etag of a redirected upload is not the one the object store computed."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"upload has etag {actual}, not {expected}")
        self.expected = expected
        self.actual = actual


class StorageUnavailable(StorageError):
    """The backend could not be reached or refused us (an object store down, bad credentials)."""


class BlobBeingCollected(StorageUnavailable):
    """The blob's bytes are being deleted by gc (or were, after this push published them): this
    push cannot use them now; sending it again later works (``registry.gc``)."""


# Called by a backend once a chunk is in (with the upload's new size): the running-hash record to
# keep with the session, or None when the hash does not cover that size (the record is dropped).
StateAfter = Callable[[int], Awaitable[bytes | None]]


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    # sha256 hex of each CHUNK_SIZE chunk, when the store computed them (on commit).
    chunk_sums: tuple[str, ...] = ()
    # The blob row's generation claimed before the bytes were published (``VerifiedStore.claim``);
    # linking them checks it is still the row's.
    generation: str | None = None


@dataclass(frozen=True, slots=True)
class UploadInfo:
    upload_id: str
    size: int
    modified: float  # unix time of the last write


class BlobStore(Protocol):
    """What every backend provides. All methods are safe to call from several processes (and,
    for a shared backend such as S3, from several machines)."""

    # Whether ``part_url`` hands out URLs (an object store's): the registry tells clients so.
    part_urls: bool
    # Whether the backend keeps two appends to one upload apart itself (a file lock, which dies
    # with its process); where not, the registry holds a lease on the session row while writing.
    exclusive_appends: bool

    async def stat(self, digest: Digest) -> BlobInfo:
        """Size of a committed blob; raises BlobNotFound."""
        ...

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes (all remaining if None) from ``offset``; raises BlobNotFound."""
        ...

    async def delete(self, digest: Digest) -> None:
        """Remove a blob's bytes; a missing blob is not an error. The caller made sure that no
        upload publishes the same digest meanwhile (``registry.gc``)."""
        ...

    def list(self) -> AsyncIterator[BlobInfo]:
        """Every committed blob (chunk sums not filled in)."""
        ...

    async def redirect_url(self, digest: Digest, expires_in: int) -> str | None:
        """A URL serving the blob's bytes (with Range) without credentials, or None to serve them
        ourselves."""
        ...

    async def start_upload(self, upload_id: str, state: bytes | None) -> None:
        """A new, empty session, keeping ``state`` (the layer above's record) with it."""
        ...

    async def upload_size(self, upload_id: str) -> int:
        """Bytes received so far; raises UploadNotFound."""
        ...

    async def append_upload(
        self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], length: int | None, state_after: StateAfter
    ) -> int:
        """Append a chunk that must start at ``offset`` (else OffsetMismatch); the new size.

        With a declared ``length`` the chunk is all or nothing: a short (IncompleteChunk) or long
        (OversizedChunk) body, or one that fails, leaves the upload as it was, so the same chunk can
        be sent again. Without one, whatever arrived is kept. Whenever the upload changed, the
        backend keeps ``await state_after(new_size)`` in place of the session's record, as one
        write with its own bookkeeping where it can (so that the record and the bytes agree)."""
        ...

    def read_upload(self, upload_id: str) -> AsyncIterator[bytes]:
        """The bytes received so far (to re-hash them when the running state was lost); the
        session takes no more chunks after this on a backend that must seal it to read it."""
        ...

    async def load_state(self, upload_id: str) -> bytes | None:
        """The record kept with the session (``start_upload``, ``append_upload``), or None."""
        ...

    async def publish_upload(self, upload_id: str, digest: Digest, size: int) -> None:
        """Make the upload's bytes the blob ``digest`` (durably, atomically) and end the session.

        The caller verified them; a session that no longer holds exactly ``size`` bytes (a chunk
        appended meanwhile) raises SizeMismatch and publishes nothing."""
        ...

    async def abort_upload(self, upload_id: str) -> None:
        """Discard an upload's data; a missing upload is not an error."""
        ...

    async def part_url(self, upload_id: str, offset: int, length: int, expires_in: int) -> str | None:
        """A URL the client may PUT the chunk at ``offset`` to, without credentials (an object
        store's presigned part upload), or None: send the bytes here. The bytes then bypass the
        layer above, which reads the upload back once to verify it at the commit."""
        ...

    async def upload_etag(self, upload_id: str) -> str | None:
        """For an upload whose parts went to the object store: its S3 multipart ETag (known once
        the bytes were read back), to compare with the client's; None otherwise."""
        ...

    def list_uploads(self) -> AsyncIterator[UploadInfo]: ...

    async def ready(self) -> None:
        """A cheap probe for ``/readyz``: raises StorageUnavailable when the store cannot be
        reached (the folders are gone or unreadable; the bucket does not answer)."""
        ...
