"""The in-memory backend: a dict of blobs and one of uploads, for fast tests (one process only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from formats.digest import Digest
from registry.storage.base import (
    BlobInfo,
    BlobNotFound,
    IncompleteChunk,
    OffsetMismatch,
    OversizedChunk,
    SizeMismatch,
    StateAfter,
    UploadInfo,
    UploadNotFound,
)

READ_CHUNK = 1024 * 1024


@dataclass
class _Upload:
    data: bytearray = field(default_factory=bytearray)
    state: bytes | None = None
    modified: float = field(default_factory=time.time)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class MemoryStore:
    part_urls = False
    exclusive_appends = True  # one process, and tests that need no more

    def __init__(self) -> None:
        self.blobs: dict[Digest, bytes] = {}
        self.uploads: dict[str, _Upload] = {}

    # -- blobs ---------------------------------------------------------------------------

    async def ready(self) -> None:
        return None

    async def stat(self, digest: Digest) -> BlobInfo:
        if digest not in self.blobs:
            raise BlobNotFound(str(digest))
        return BlobInfo(digest, len(self.blobs[digest]))

    async def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        data = self.blobs.get(digest)
        if data is None:
            raise BlobNotFound(str(digest))
        end = len(data) if length is None else min(len(data), offset + length)
        for pos in range(offset, end, READ_CHUNK):
            yield data[pos : min(end, pos + READ_CHUNK)]

    async def delete(self, digest: Digest) -> None:
        self.blobs.pop(digest, None)

    async def list(self) -> AsyncIterator[BlobInfo]:
        for digest in sorted(self.blobs, key=str):
            yield BlobInfo(digest, len(self.blobs[digest]))

    async def redirect_url(self, digest: Digest, expires_in: int) -> str | None:
        return None

    # -- uploads -------------------------------------------------------------------------

    def _upload(self, upload_id: str) -> _Upload:
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise UploadNotFound(upload_id)
        return upload

    async def start_upload(self, upload_id: str, state: bytes | None) -> None:
        self.uploads[upload_id] = _Upload(state=state)

    async def upload_size(self, upload_id: str) -> int:
        return len(self._upload(upload_id).data)

    async def append_upload(
        self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], length: int | None, state_after: StateAfter
    ) -> int:
        upload = self._upload(upload_id)
        async with upload.lock:
            if offset != len(upload.data):
                raise OffsetMismatch(len(upload.data), offset)
            received = 0
            try:
                async for chunk in chunks:
                    if length is not None and received + len(chunk) > length:
                        raise OversizedChunk(f"body is longer than the declared {length} bytes")
                    upload.data += chunk
                    received += len(chunk)
                if length is not None and received != length:
                    raise IncompleteChunk(f"got {received} of {length} bytes")
            except BaseException:
                if length is not None:
                    del upload.data[offset:]  # all or nothing
                elif received:
                    upload.state = await state_after(len(upload.data))
                raise
            finally:
                upload.modified = time.time()
            upload.state = await state_after(len(upload.data))
            return len(upload.data)

    async def read_upload(self, upload_id: str) -> AsyncIterator[bytes]:
        data = bytes(self._upload(upload_id).data)
        for pos in range(0, len(data), READ_CHUNK):
            yield data[pos : pos + READ_CHUNK]

    async def load_state(self, upload_id: str) -> bytes | None:
        return self._upload(upload_id).state

    async def publish_upload(self, upload_id: str, digest: Digest, size: int) -> None:
        upload = self._upload(upload_id)
        if len(upload.data) != size:
            raise SizeMismatch(size, len(upload.data))
        self.blobs[digest] = bytes(upload.data)
        del self.uploads[upload_id]

    async def abort_upload(self, upload_id: str) -> None:
        self.uploads.pop(upload_id, None)

    async def part_url(self, upload_id: str, offset: int, length: int, expires_in: int) -> str | None:
        return None

    async def upload_etag(self, upload_id: str) -> str | None:
        return None

    async def list_uploads(self) -> AsyncIterator[UploadInfo]:
        for upload_id, upload in list(self.uploads.items()):
            yield UploadInfo(upload_id, len(upload.data), upload.modified)
