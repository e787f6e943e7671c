"""Single-flight blob fetches from an upstream: one download per digest however many clients
wait for it, streamed to each of them while it is being written, verified before it is stored.

A ``Flight`` writes the upstream's bytes to ``DATA_DIR/mirror/partial/<hex>``, hashing them as they
arrive (the whole sha256; the 16 MiB chunk sums are read back once it is stored, ``service``).
Readers open that file and read whatever prefix is already there, waiting on the flight's
condition for more, so a range past the written end is served as soon as it is written. Once the
upstream's bytes end, the digest (and the size the upstream announced) must match, and only then
does the file become the store's blob: a rename into a filesystem store (same folder tree, so
atomic), or a monolithic upload into any other backend (S3), which verifies once more. A mismatch
deletes the file; the readers still reading it get an error, and nothing is cached.

An upstream connection that breaks mid-blob is resumed with ``Range: bytes=<written>-`` (a few
times, with a pause), and a partial file left by a restart is resumed too: its bytes are hashed
again first.

Across worker processes (``--workers N``, or replicas sharing a data directory on one host) the
single flight holds through an OS lock: the worker that takes ``flock`` on ``<hex>.lock`` next to
the partial file downloads (and writes the blob's size into the lock file once the upstream says
it); the others *follow*: they serve the partial file's bytes as its size grows, until the lock is
let go, and then find the blob in the store. A follower whose downloader stopped without storing
the blob fails its readers if it had served them bytes (as the downloader's own readers fail), else
takes the lock and downloads itself. ``flock`` is per host: replicas on different hosts each fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from formats.digest import Digest
from registry.mirror.upstream import UpstreamClient, UpstreamError, UpstreamUnreachable
from registry.storage import BlobInfo, BlobNotFound, DigestMismatch, SizeMismatch, VerifiedStore, put_blob

log = logging.getLogger("hangar.registry.mirror")

READ_CHUNK = 1024 * 1024
WRITE_BATCH = 4 * 1024 * 1024
RESUME_ATTEMPTS = 5
FOLLOW_POLL = 0.05  # seconds: how often a follower looks at another worker's partial file and lock
T = TypeVar("T")


def _in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


class FetchFailed(Exception):
    """The upstream's copy could not be fetched or did not verify; nothing was cached."""


class Flight:
    """One blob on its way from the upstream into the store."""

    def __init__(self, store: VerifiedStore, digest: Digest, path: Path, expected_size: int | None) -> None:
        self.store = store
        self.digest = digest
        self.path = path
        self.expected_size = expected_size
        self.size: int | None = None  # known once the upstream answered
        self.written = 0
        self.error: BaseException | None = None
        self.done = False
        self.repositories: set[str] = set()  # where the blob is linked once stored
        self.changed = asyncio.Condition()
        self.task: asyncio.Task[BlobInfo] | None = None
        self.upstream_bytes = 0  # bytes this flight received from the upstream (counted for tests/logs)
        self.lock_fd: int | None = None  # the cross-worker lock, while this worker downloads
        self.by_other_worker = False  # another worker downloaded and stored it (and reads its chunk sums)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _set_size(self, size: int) -> None:
        """The blob's size, now known: for this worker's readers, and (written into the lock file)
        for the workers following this download."""
        self.size = size
        if self.lock_fd is not None:
            os.pwrite(self.lock_fd, f"{size}\n".encode(), 0)
        await self._notify()

    async def wait_size(self) -> int:
        """The blob's size, once the upstream said it; raises FetchFailed if the fetch failed first."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.size is not None or self.error is not None or self.done)
        if self.size is None:
            raise FetchFailed(str(self.error or "the fetch ended without a size"))
        return self.size

    async def _wait_past(self, pos: int) -> None:
        """Until more than ``pos`` bytes are written, or the flight ended."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.written > pos or self.error is not None or self.done)

    async def wait(self) -> BlobInfo:
        assert self.task is not None
        return await asyncio.shield(self.task)

    async def read(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``offset``… of the blob as they arrive; raises FetchFailed if it fails mid-way.

        The file is opened first: once verified it is renamed into the store (or deleted after a
        copy), and an open descriptor keeps reading the same bytes either way."""
        size = await self.wait_size()
        end = size if length is None else min(size, offset + length)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            # Stored meanwhile (moved into the store, or copied there and deleted; by this worker or
            # the one it follows): read it there once the flight has ended well.
            async with self.changed:
                await self.changed.wait_for(lambda: self.done or self.error is not None)
            if self.error is not None:
                raise FetchFailed(f"{self.digest}: {self.error}") from None
            async for data in self.store.read(self.digest, offset, end - offset):
                yield data
            return
        try:
            pos = offset
            while pos < end:
                await self._wait_past(pos)
                if self.error is not None:
                    raise FetchFailed(f"{self.digest}: {self.error}")
                available = min(self.written, end)
                while pos < available:
                    data = await _in_thread(os.pread, fd, min(READ_CHUNK, available - pos), pos)
                    if not data:
                        raise FetchFailed(f"{self.digest}: the partial file is shorter than written")
                    pos += len(data)
                    yield data
        finally:
            os.close(fd)


class BlobFetcher:
    """The flights of one worker, by digest."""

    def __init__(
        self,
        store: VerifiedStore,
        partial_dir: Path,
        on_stored: Callable[[Flight, BlobInfo], Awaitable[None]],
        *,
        retry_pause: float = 1.0,
    ) -> None:
        self.store = store
        self.partial_dir = partial_dir
        self.on_stored = on_stored
        self.retry_pause = retry_pause
        self.flights: dict[Digest, Flight] = {}
        partial_dir.mkdir(parents=True, exist_ok=True)

    def fetch(self, client: UpstreamClient, repository: str, digest: Digest, size: int | None = None) -> Flight:
        """The flight for ``digest``: the one in progress, or a new one (single-flight)."""
        flight = self.flights.get(digest)
        if flight is None:
            flight = Flight(self.store, digest, self.partial_dir / digest.hex, size)
            self.flights[digest] = flight
            flight.task = asyncio.create_task(self._run(flight, client, repository))
        flight.repositories.add(repository)
        return flight

    async def aclose(self) -> None:
        for flight in list(self.flights.values()):
            if flight.task is not None:
                flight.task.cancel()
                with contextlib.suppress(BaseException):
                    await flight.task

    async def _run(self, flight: Flight, client: UpstreamClient, repository: str) -> BlobInfo:
        try:
            info = await self._single(flight, client, repository)
            flight.done = True
            await flight._notify()
            try:
                await self.on_stored(flight, info)
            except Exception as e:  # the blob is stored; linking it is retried by the next request
                log.error("mirror: linking %s failed: %s", flight.digest, e, exc_info=e)
            return info
        except BaseException as e:
            flight.error = e
            await flight._notify()
            if isinstance(e, asyncio.CancelledError):
                raise
            log.warning("mirror: fetching %s from %s failed: %s", flight.digest, client.upstream.url, e)
            raise FetchFailed(str(e)) from None
        finally:
            flight.done = True
            self.flights.pop(flight.digest, None)

    async def _single(self, flight: Flight, client: UpstreamClient, repository: str) -> BlobInfo:
        """The blob in the store, downloaded here or by the worker holding its lock."""
        lock_path = flight.path.with_name(flight.path.name + ".lock")
        while True:
            fd, held = await _in_thread(_open_lock, lock_path)
            if held:
                try:
                    return await self._download_holding(flight, client, repository, fd)
                finally:
                    _release(fd, lock_path)
            try:
                info = await self._follow(flight, fd)
            finally:
                os.close(fd)
            if info is not None:
                return info
            if flight.written:  # its readers had bytes of a copy that was never stored
                raise FetchFailed(f"{flight.digest}: the worker fetching it stopped before it was stored")
            # Nothing served yet: fetch it here (the next turn takes the lock).

    async def _download_holding(self, flight: Flight, client: UpstreamClient, repository: str, fd: int) -> BlobInfo:
        """Download, verify and store the blob, holding the cross-worker lock ``fd``."""
        try:  # another worker stored it between this one's look at the store and the lock
            info = await self.store.stat(flight.digest)
        except BlobNotFound:
            pass
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(flight.path)  # a leftover of an earlier try: readers go to the store
            flight.by_other_worker = True
            await flight._set_size(info.size)
            return info
        flight.lock_fd = fd
        try:
            return await self._publish(flight, await self._download(flight, client, repository))
        except BaseException as e:
            if not isinstance(e, (UpstreamUnreachable, asyncio.CancelledError)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(flight.path)  # a bad copy is never resumed; an interrupted one is
            raise
        finally:
            flight.lock_fd = None

    async def _follow(self, flight: Flight, lock_fd: int) -> BlobInfo | None:
        """Another worker holds the lock and downloads: serve its partial file's bytes as they are
        written, until it lets go. The blob's info once it is in the store; None when that worker
        stopped without storing it (failed, or killed)."""
        flight.by_other_worker = True
        part: int | None = None
        try:
            while True:
                released = _try_flock(lock_fd)  # non-blocking
                if part is None:
                    with contextlib.suppress(FileNotFoundError):
                        part = os.open(flight.path, os.O_RDONLY)
                # Readers open the partial file by name once the size is set, so only once it exists.
                if flight.size is None and part is not None:
                    size = flight.expected_size if flight.expected_size is not None else _announced_size(lock_fd)
                    if size is not None:
                        await flight._set_size(size)
                if part is not None and flight.size is not None:
                    written = min(os.fstat(part).st_size, flight.size)
                    if written > flight.written:
                        flight.written = written
                        await flight._notify()
                if released:
                    break
                await asyncio.sleep(FOLLOW_POLL)
        finally:
            if part is not None:
                os.close(part)
        try:
            info = await self.store.stat(flight.digest)
        except BlobNotFound:
            return None
        if flight.size is None:
            await flight._set_size(info.size)
        flight.written = info.size  # the readers' partial file was the stored blob's, whole
        return info

    async def _download(self, flight: Flight, client: UpstreamClient, repository: str) -> BlobInfo:
        content = _Sha256()
        # A partial file from an earlier try (or a restart): hash what it holds and go on from there.
        with contextlib.suppress(FileNotFoundError), open(flight.path, "rb") as f:
            while data := await _in_thread(f.read, WRITE_BATCH):
                await _in_thread(content.update, data)
        flight.written = content.size
        attempts = 0
        with open(flight.path, "ab") as out:
            out.truncate(content.size)
            while True:
                try:
                    await self._stream(flight, client, repository, content, out)
                    break
                except UpstreamUnreachable as e:
                    attempts += 1
                    if attempts > RESUME_ATTEMPTS:
                        raise
                    log.warning("mirror: %s broke off at byte %d (%s); resuming", flight.digest, flight.written, e)
                    await asyncio.sleep(self.retry_pause)
            await _in_thread(out.flush)
            await _in_thread(os.fsync, out.fileno())
        if flight.size is not None and content.size != flight.size:
            raise SizeMismatch(flight.size, content.size)
        actual = content.digest()
        if actual != flight.digest:
            raise DigestMismatch(flight.digest, actual)
        # No chunk sums here: a second hash pass would slow the download down (Mirror._chunk_sums
        # reads them back once the blob is stored).
        return BlobInfo(flight.digest, content.size)

    async def _stream(
        self, flight: Flight, client: UpstreamClient, repository: str, content: _Sha256, out: Any
    ) -> None:
        offset = flight.written
        async with client.blob(repository, str(flight.digest), offset) as response:
            total = _total_size(response, offset)
            if total is not None:
                if flight.expected_size is not None and total != flight.expected_size:
                    raise UpstreamError(
                        f"the upstream's blob has {total} bytes, the manifest says {flight.expected_size}"
                    )
                if flight.size is None:
                    await flight._set_size(total)
            elif flight.expected_size is not None and flight.size is None:
                await flight._set_size(flight.expected_size)
            # One buffer, filled and written again and again: a new 4 MiB object per batch (and the
            # copies into it) cost more CPU than the hashing, as page faults on fresh memory.
            batch = memoryview(bytearray(WRITE_BATCH))
            filled = 0
            try:
                async for data in response.aiter_raw():
                    flight.upstream_bytes += len(data)
                    taken = 0
                    while taken < len(data):
                        n = min(len(data) - taken, WRITE_BATCH - filled)
                        batch[filled : filled + n] = data[taken : taken + n]
                        filled += n
                        taken += n
                        if filled == WRITE_BATCH:
                            await self._write(flight, content, out, batch)
                            filled = 0
            except Exception as e:  # httpx's read errors: the connection broke mid-body
                if filled:
                    await self._write(flight, content, out, batch[:filled])
                raise UpstreamUnreachable(f"the body broke off: {type(e).__name__}") from None
            if filled:
                await self._write(flight, content, out, batch[:filled])
        if flight.size is None:  # no length announced: what came is the blob (it is verified next)
            await flight._set_size(flight.written)

    async def _write(self, flight: Flight, content: _Sha256, out: Any, data: memoryview) -> None:
        """Write, hash (at once, in two threads) and announce ``data``, done with it on return."""
        if flight.size is not None and flight.written + len(data) > flight.size:
            raise UpstreamError(f"the upstream sent more than the {flight.size} bytes it announced")
        write = _in_thread(out.write, data)
        await _in_thread(content.update, data)
        await write
        await _in_thread(out.flush)
        flight.written += len(data)
        await flight._notify()

    async def _publish(self, flight: Flight, info: BlobInfo) -> BlobInfo:
        """The verified file becomes the store's blob: its info, with the claim on its row (as an
        upload's commit makes, so gc does not delete it before it is linked)."""
        from registry.storage.filesystem import FilesystemStore

        backend = self.store.backend
        if isinstance(backend, FilesystemStore):
            target = backend.blob_path(info.digest)
            generation = await self.store.claimed(info.digest, info.size)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(flight.path, 0o644)
                os.link(flight.path, target)  # a reader of the partial file keeps its inode
                os.unlink(flight.path)
                return dataclasses.replace(info, generation=generation)
            except FileExistsError:
                os.unlink(flight.path)  # another worker (or an upload) stored it first
                return dataclasses.replace(info, generation=generation)
            except OSError as e:  # another filesystem: copy it in below (which claims again)
                await self.store.release_claim(info.digest, generation)
                log.info("mirror: cannot link %s into the store (%s); copying", info.digest, e)

        async def chunks() -> AsyncIterator[bytes]:
            with open(flight.path, "rb") as f:
                while data := await _in_thread(f.read, WRITE_BATCH):
                    yield data

        stored = await put_blob(self.store, f"mirror-{uuid.uuid4().hex}", info.digest, chunks(), info.size)
        # Readers that opened the partial file keep reading it after this unlink.
        os.unlink(flight.path)
        return stored


def _open_lock(path: Path) -> tuple[int, bool]:
    """The lock file's descriptor, and whether this process now holds its ``flock``. A holder
    unlinks the file before it lets go, so a lock won on a file no longer at ``path`` holds
    nothing: then again, on the file there now."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_flock(fd):
            return fd, False
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd, True
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _release(fd: int, path: Path) -> None:
    """Unlink the lock file, then let go of it (the order ``_open_lock`` relies on)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


def _announced_size(lock_fd: int) -> int | None:
    """The size the downloading worker wrote into the lock file (``_set_size``), once whole."""
    text = os.pread(lock_fd, 32, 0)
    return int(text) if text.endswith(b"\n") and text[:-1].isdigit() else None


class _Sha256:
    """The whole blob's sha256 and its size (hashlib releases the GIL on large updates)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(self._hash.hexdigest())


def _total_size(response: Any, offset: int) -> int | None:
    content_range = response.headers.get("content-range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and response.headers.get("content-encoding") is None:
        return offset + int(length)
    return None
