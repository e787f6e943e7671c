"""The filesystem backend (the embedded default).

Layout (by default under the registry's data directory)::

    blobs/
      sha256/<first 2 hex>/<64 hex>     committed blob, immutable, 0644
    uploads/                            (``blobs/_uploads/`` for a ``--storage file://`` folder)
      <upload id>                       bytes received so far for one upload session
      <upload id>.hash                  the running hash after the last chunk (registry.storage.verify)

An upload is published by fsync, then ``os.replace`` into ``blobs/`` (``VerifiedStore`` verified
it first): the rename is atomic, so a reader sees either no blob or the whole verified blob.
Writers of one upload take an exclusive ``flock`` on its file; several processes (uvicorn workers)
can share the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from formats.digest import Digest
from registry.storage.base import (
    BlobInfo,
    BlobNotFound,
    IncompleteChunk,
    OffsetMismatch,
    OversizedChunk,
    SizeMismatch,
    StateAfter,
    StorageUnavailable,
    UploadInfo,
    UploadNotFound,
)

READ_CHUNK = 1024 * 1024
WRITE_BATCH = 4 * 1024 * 1024
LOCK_TIMEOUT = 60.0
_UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


def _in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Start ``fn`` in the default thread pool now; await the result later."""
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


class FilesystemStore:
    part_urls = False
    exclusive_appends = True  # an flock on the upload's file

    def __init__(self, root: Path, *, uploads_dir: Path | None = None) -> None:
        """Blobs under ``root/sha256``; uploads in ``uploads_dir`` (``root/_uploads`` by default),
        which must be on the same filesystem (publishing is a rename)."""
        self.root = root
        self.blobs_dir = root / "sha256"
        self.uploads_dir = uploads_dir if uploads_dir is not None else root / "_uploads"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)

    # -- paths ---------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.hex[:2] / digest.hex

    def _upload_path(self, upload_id: str) -> Path:
        if _UPLOAD_ID_RE.fullmatch(upload_id) is None:
            raise UploadNotFound(upload_id)
        return self.uploads_dir / upload_id

    def _state_path(self, upload_id: str) -> Path:
        return self._upload_path(upload_id).with_name(f"{upload_id}.hash")

    async def ready(self) -> None:
        def probe() -> None:
            for folder in (self.blobs_dir, self.uploads_dir):
                if not folder.is_dir() or not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
                    raise StorageUnavailable(f"{folder} is missing or not readable and writable")

        await _in_thread(probe)

    # -- blobs ---------------------------------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo:
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            raise BlobNotFound(str(digest)) from None
        return BlobInfo(digest, st.st_size)

    async def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        try:
            fd = os.open(self.blob_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFound(str(digest)) from None
        try:
            end = os.fstat(fd).st_size if length is None else offset + length
            pos = offset
            # Read the next chunk while the previous one is being sent.
            pending = _in_thread(os.pread, fd, min(READ_CHUNK, end - pos), pos) if pos < end else None
            while pending is not None:
                data = await pending
                if not data:
                    raise BlobNotFound(f"{digest} is shorter than expected")
                pos += len(data)
                pending = _in_thread(os.pread, fd, min(READ_CHUNK, end - pos), pos) if pos < end else None
                yield data
        finally:
            if pending is not None:  # the reader stopped early; let the read in flight end
                with contextlib.suppress(BaseException):
                    await pending
            os.close(fd)

    async def delete(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.blob_path(digest))

    async def list(self) -> AsyncIterator[BlobInfo]:
        for shard in sorted(self.blobs_dir.iterdir()):
            if not shard.is_dir():
                continue
            for entry in sorted(shard.iterdir()):
                if _HEX_RE.fullmatch(entry.name):
                    yield BlobInfo(Digest(entry.name), entry.stat().st_size)

    async def redirect_url(self, digest: Digest, expires_in: int) -> str | None:
        return None  # the registry serves these bytes itself

    # -- uploads -------------------------------------------------------------------------

    async def start_upload(self, upload_id: str, state: bytes | None) -> None:
        fd = os.open(self._upload_path(upload_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
        self._save_state(upload_id, state)

    async def upload_size(self, upload_id: str) -> int:
        try:
            return os.stat(self._upload_path(upload_id)).st_size
        except FileNotFoundError:
            raise UploadNotFound(upload_id) from None

    async def append_upload(
        self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], length: int | None, state_after: StateAfter
    ) -> int:
        fd = await _in_thread(self._open_locked, upload_id)
        try:
            size = os.fstat(fd).st_size
            if offset != size:
                raise OffsetMismatch(size, offset)
            writer = _PipelinedWriter(fd, offset)
            try:
                async for chunk in chunks:
                    if length is not None and writer.received + len(chunk) > length:
                        raise OversizedChunk(f"body is longer than the declared {length} bytes")
                    await writer.feed(chunk)
                await writer.flush()
                if length is not None and writer.received != length:
                    raise IncompleteChunk(f"got {writer.received} of {length} bytes")
            except BaseException:
                await writer.settle()
                if length is not None:
                    # All or nothing: the client may send this same chunk again.
                    os.ftruncate(fd, offset)
                elif writer.received:
                    size = os.fstat(fd).st_size
                    self._save_state(upload_id, await state_after(size))
                raise
            # Saved under the lock, so that the record always describes the bytes before it.
            self._save_state(upload_id, await state_after(offset + writer.received))
            return offset + writer.received
        finally:
            os.close(fd)  # also releases the flock

    async def read_upload(self, upload_id: str) -> AsyncIterator[bytes]:
        try:
            fd = os.open(self._upload_path(upload_id), os.O_RDONLY)
        except FileNotFoundError:
            raise UploadNotFound(upload_id) from None
        try:
            pos = 0
            while data := await _in_thread(os.pread, fd, WRITE_BATCH, pos):
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    async def load_state(self, upload_id: str) -> bytes | None:
        try:
            return self._state_path(upload_id).read_bytes()
        except FileNotFoundError:
            return None

    def _save_state(self, upload_id: str, state: bytes | None) -> None:
        # Written aside and renamed, so a reader never sees half of it. Not fsynced: a state lost
        # in a crash costs one re-read at the commit, never a wrong blob.
        path = self._state_path(upload_id)
        if state is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(state)
        os.replace(tmp, path)

    async def publish_upload(self, upload_id: str, digest: Digest, size: int) -> None:
        await _in_thread(self._publish, upload_id, digest, size)

    async def abort_upload(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, UploadNotFound):
            os.unlink(self._upload_path(upload_id))
        with contextlib.suppress(FileNotFoundError, UploadNotFound):
            os.unlink(self._state_path(upload_id))

    async def part_url(self, upload_id: str, offset: int, length: int, expires_in: int) -> str | None:
        return None  # the bytes come here

    async def upload_etag(self, upload_id: str) -> str | None:
        return None

    async def list_uploads(self) -> AsyncIterator[UploadInfo]:
        for entry in self.uploads_dir.iterdir():
            if _UPLOAD_ID_RE.fullmatch(entry.name) is None:
                continue  # a saved hash state, or a temporary file
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            yield UploadInfo(entry.name, st.st_size, st.st_mtime)

    # -- internals -----------------------------------------------------------------------

    def _open_locked(self, upload_id: str) -> int:
        """Open an upload's file with an exclusive lock, or raise UploadNotFound.

        The lock is taken on the open file; if the upload was committed (renamed away) or
        aborted while we waited, the path no longer names our inode and we give up."""
        path = self._upload_path(upload_id)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise UploadNotFound(upload_id) from None
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OSError(errno.EBUSY, "upload is busy") from None
                    time.sleep(0.01)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                raise UploadNotFound(upload_id)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _publish(self, upload_id: str, digest: Digest, size: int) -> None:
        fd = self._open_locked(upload_id)
        path = self._upload_path(upload_id)
        try:
            actual_size = os.fstat(fd).st_size
            if size != actual_size:
                raise SizeMismatch(size, actual_size)
            os.fsync(fd)
            target = self.blob_path(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            _fsync_dir(target.parent)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_path(upload_id))


class _PipelinedWriter:
    """Batch incoming chunks; write each batch in a thread while the event loop receives the next
    one (and ``VerifiedStore`` hashes it in two more)."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.pos = offset
        self.received = 0
        self._chunks: list[bytes] = []
        self._batched = 0
        self._pending: list[asyncio.Future[None]] = []

    async def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._batched += len(chunk)
        self.received += len(chunk)
        if self._batched >= WRITE_BATCH:
            await self._submit()

    async def flush(self) -> None:
        if self._chunks:
            await self._submit()
        await self.settle(raise_errors=True)

    async def settle(self, raise_errors: bool = False) -> None:
        """Wait until nothing is in flight (a failed upload truncates the file after this)."""
        pending, self._pending = self._pending, []
        results = await asyncio.gather(*pending, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and raise_errors:
            raise errors[0]

    async def _submit(self) -> None:
        await self.settle(raise_errors=True)
        data = b"".join(self._chunks)
        self._chunks, self._batched = [], 0
        pos = self.pos
        self.pos += len(data)
        self._pending = [_in_thread(_write_all, self.fd, data, pos)]


def _write_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
