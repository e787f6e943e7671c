"""Pulling a model: manifest, then every missing blob, then the manifest into the store.

A blob is fetched as parallel ``Range`` parts written at their offsets into
``blobs/sha256-<hex>-partial``; when none is left to start, an idle worker takes over the second
half of the slowest part's remainder. Which bytes of each part are on disk is saved in
``sha256-<hex>-partial.json`` (the page cache outlives a killed process), so a pull stopped by
Ctrl-C, kill -9, a reboot, a registry restart or a network cut resumes where it stopped. By
default the verified file is renamed into place without waiting for the disk, behind a durable
marker that has it re-verified after a crash of the machine (``fsync = "deferred"``, see
client.store); with ``fsync = true`` writeback starts as each part completes and the file is
fsynced before the rename.

Verification, twice over:

- the whole blob is hashed against its digest before it is renamed into place. That hash runs
  while the download goes on, over the completed prefix of the file, so little is left at the end;
- where the registry offers chunk digests (``GET /v2/<name>/chunksums/<digest>``, Hangar does),
  parts start as one chunk each (and are only ever split), and when the whole does not match, the
  chunks are checked to find the damaged ones: only those are fetched again. A chunk that stays
  damaged (a registry whose copy is bad) fails the pull but keeps every good chunk for the next
  try. Without chunk digests, a mismatch discards the blob. (Checking chunks only on a mismatch
  keeps the common case to one hash pass.)

The manifest is written last, under the lock that ``hangar rm`` takes.

Where the bytes come from: a registry that answers the blob GET with a ``Location`` (ours, a
signed URL; ollama.com, a CDN via 307) is read from that URL without credentials; a plain OCI
registry (no ``Location``) is read from the blob URL itself, with credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import mmap
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
import httpx

from client import errors
from client.auth import bearer_headers
from client.config import ClientSettings, FsyncMode
from client.credentials import pull_scope, refuse_downgrade, same_origin
from client.http import get_model_manifest, make_client, make_data_session, registry_url, send
from client.limits import (
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    check_blob_size,
    check_free_space,
    chunk_sums_limit,
    disk_full,
    read_body,
)
from client.progress import Progress, ProgressCallback, no_progress
from client.store import LocalModel, Store
from client.store_ops import delete_unused_blobs
from client.transfer import (
    MAX_ATTEMPTS,
    STALL_SECONDS,
    BandwidthLimiter,
    Part,
    Throttle,
    backoff,
    plan_parts,
    start_writeback,
)
from formats.digest import Digest
from formats.manifest import Descriptor
from formats.names import ModelName

STATE_VERSION = 3  # 2 (one part per chunk) is still read
SAVE_EVERY = 1.0  # seconds between part-state saves
MAP_WINDOW = 16 * 1024 * 1024  # bytes of the file mapped at once to hash them
MIN_SPLIT = 4 * 1024 * 1024  # a part in flight is halved for an idle worker while both halves are this big
TAKE_OVER_POLL = 0.25  # seconds an idle worker waits before looking for a part to split again
CHUNK_ATTEMPTS = 3  # a chunk that fails its digest this often is bad on the registry
# A part whose bytes arrive slower than this over a window (a body dripping a byte every 20 s
# passes every per-read timeout) is dropped and retried from where it stopped; after
# MAX_ATTEMPTS the pull fails and a later run resumes it.
MIN_RATE = 4 * 1024  # bytes/s (less under a --max-rate that makes it unreachable)
MIN_RATE_WINDOW = 60.0  # seconds
# However small the configured part size, a blob is planned in at most this many parts.
MAX_PLANNED_PARTS = 65_536
# Smaller blobs are flushed before they are published even when flushing is deferred: their
# fsync costs no more than writing the marker would.
DEFER_FLUSH_MIN = 1024 * 1024


@dataclass
class PullOptions:
    insecure: bool = False
    concurrency: int | None = None
    part_size: int | None = None
    max_rate: int | None = None


@dataclass
class PullResult:
    model: LocalModel
    bytes_fetched: int  # blob bytes that crossed the network in this run
    registry: str  # the registry (or mirror) the model came from


async def pull(
    name: ModelName,
    store: Store,
    settings: ClientSettings,
    options: PullOptions | None = None,
    progress: ProgressCallback = no_progress,
) -> PullResult:
    options = options or PullOptions()
    store.ensure()
    origin = registry_url(name, settings, options.insecure)
    mirror = settings.registry(name.host).mirror
    if mirror:
        try:
            return await _pull_from(mirror.rstrip("/"), name, store, settings, options, progress)
        except (errors.RegistryError, errors.IntegrityError) as e:
            # Any failure of the mirror (down, 5xx, a refusal, a transfer cut short, bad bytes) is
            # the origin's turn: blobs the mirror did deliver are verified and kept, so the
            # origin is asked only for the rest.
            progress(Progress(f"mirror {mirror} failed ({e}); pulling from {origin}"))
    return await _pull_from(origin, name, store, settings, options, progress)


async def _pull_from(
    base: str,
    name: ModelName,
    store: Store,
    settings: ClientSettings,
    options: PullOptions,
    progress: ProgressCallback,
) -> PullResult:
    concurrency = options.concurrency or settings.concurrency
    limiter = BandwidthLimiter(options.max_rate or settings.max_rate)
    fetched = 0
    host = httpx.URL(base).netloc.decode()
    async with (
        make_client(settings, base, scopes=[pull_scope(name.repository)], connections=concurrency + 2) as http,
        make_data_session(settings, host, concurrency) as data,
    ):
        progress(Progress("pulling manifest"))
        manifest = await get_model_manifest(http, base, name, "pull model manifest")
        raw = manifest.raw

        # Layers then config, as Ollama orders them.
        ordered = [*manifest.layers, *([manifest.config] if manifest.config else [])]
        blobs = list({d.digest: d for d in ordered}.values())
        _check_space(store, blobs)
        while True:
            for desc in blobs:
                if store.has_blob(desc.digest, desc.size):
                    progress(Progress(f"pulling {desc.digest.short}", str(desc.digest), desc.size, desc.size))
                    continue
                download = BlobDownload(http, data, store, base, name.repository, desc, limiter, progress)
                download.fsync = settings.fsync
                await download.run(concurrency, options.part_size or settings.part_size)
                fetched += download.bytes_fetched
            progress(Progress("verifying sha256 digest"))
            # Under the lock `hangar rm` takes, so it cannot delete a blob we count on (if it
            # already did, fetch it again).
            async with _locked(store, "manifests"):
                if all(store.has_blob(d.digest, d.size) for d in blobs):
                    progress(Progress("writing manifest"))
                    replaced = _blobs_of(store, name)
                    store.put_manifest(name, raw)
                    # As Ollama: when the tag moved, the old version's blobs go unless another
                    # model still uses them (no orphans after an update).
                    if replaced - {d.digest for d in blobs}:
                        progress(Progress("removing unused layers"))
                        delete_unused_blobs(store, replaced)
                    break
    progress(Progress("success"))
    return PullResult(store.get(name), fetched, base)


def _check_space(store: Store, blobs: list[Descriptor]) -> None:
    """Refuse, before anything is planned or written, a manifest whose layers declare absurd
    sizes or more than the store's filesystem can hold (a hostile registry's lies cost an error,
    not memory for billions of parts or a terabyte-sized sparse file)."""
    needed = 0
    for desc in blobs:
        check_blob_size(desc.size, f"pull model manifest: layer {desc.digest.short}")
        if not store.has_blob(desc.digest, desc.size):
            needed += desc.size - _allocated(store.partial_path(desc.digest))
    check_free_space(store.blobs_dir, needed, "pull")


def _allocated(path: Path) -> int:
    """Bytes a (sparse) partial download already holds on disk."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def _blobs_of(store: Store, name: ModelName) -> set[Digest]:
    """The blobs of the model now stored under ``name`` (none if there is none, or it is unreadable)."""
    try:
        return {d.digest for d in store.get(name).manifest.blobs()}
    except errors.HangarError:
        return set()


@contextlib.asynccontextmanager
async def _locked(store: Store, key: str) -> AsyncIterator[None]:
    """Hold a store lock from async code (the wait happens in a thread)."""
    cm = store.lock(key)
    await anyio.to_thread.run_sync(cm.__enter__)
    try:
        yield
    finally:
        cm.__exit__(None, None, None)


@dataclass(frozen=True)
class Chunk:
    """A span of a blob whose sha256 the registry gave (``chunksums``)."""

    digest: str  # sha256 hex
    offset: int
    size: int


class BlobDownload:
    """One blob: plan, fetch parts in parallel, each written at its offset into the partial file,
    verify the whole as its completed prefix grows (and chunks where it does not match), then
    publish.

    The bytes travel through aiohttp (its C parser is several times faster than httpx's on
    large bodies); control requests (chunk sums, source resolution, tokens) go through httpx."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        data: aiohttp.ClientSession,
        store: Store,
        base: str,
        repository: str,
        desc: Descriptor,
        limiter: BandwidthLimiter,
        progress: ProgressCallback,
    ) -> None:
        self.http = http
        self.data = data
        self.store = store
        self.base = base
        self.repository = repository
        self.blob_url = f"{base}/v2/{repository}/blobs/{desc.digest}"
        self.desc = desc
        self.limiter = limiter
        self.digest = desc.digest
        self.partial = store.partial_path(desc.digest)
        self.state_path = self.partial.with_name(self.partial.name + ".json")
        self.parts: list[Part] = []  # in offset order, covering the blob
        self.chunks: list[Chunk] | None = None
        self._streaming: list[Part] = []  # parts receiving a 206: the ones an idle worker may split
        self.bytes_fetched = 0
        self.fsync: FsyncMode = "deferred"  # when the data is flushed (see client.config)
        self._fd = -1
        self._source: tuple[str, bool] = (self.blob_url, True)
        self._source_generation = 0
        self._source_lock = asyncio.Lock()
        self._hashed: _PrefixHash | None = None
        self._hashed_parts = 0  # parts[:n] are done and handed to the hashing thread
        self._report = Throttle(lambda: progress(Progress(
            f"pulling {self.digest.short}", str(self.digest), self.desc.size, self.completed)))  # fmt: skip

    @property
    def completed(self) -> int:
        return sum(p.completed for p in self.parts)

    async def run(self, concurrency: int, part_size: int) -> None:
        try:
            await self._run(concurrency, part_size)
        except OSError as e:  # a full disk: where, and how much is left (the parts done are kept)
            full = disk_full(e, self.partial.parent, self.desc.size - self.completed, f"pull {self.digest.short}")
            if full is None:
                raise
            raise full from None

    async def _run(self, concurrency: int, part_size: int) -> None:
        check_blob_size(self.desc.size, f"pull {self.digest.short}")  # before anything is planned
        async with _locked(self.store, f"blob-{self.digest.hex}"):
            if self.store.has_blob(self.digest, self.desc.size):  # another process got it first
                self.parts = [Part(0, self.desc.size, self.desc.size)]
                self._report(force=True)
                return
            chunks, direct = await self._chunk_sums()
            self.parts, self.chunks = self._load_state(chunks) or self._plan(chunks, part_size)
            fd = self._fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size != self.desc.size:
                    try:
                        os.ftruncate(fd, self.desc.size)
                    except OSError as e:  # EFBIG: past this filesystem's largest file
                        self._discard()
                        raise errors.NotEnoughSpace(
                            f"pull {self.digest.short}: cannot make a {self.desc.size}-byte file in "
                            f"{self.partial.parent}: {e.strerror}"
                        ) from None
                self._report(force=True)
                self._hashed_parts = 0
                with _PrefixHash(fd) as self._hashed:
                    try:
                        self._hash_done_prefix()  # parts a previous run completed
                        if any(not p.done for p in self.parts):
                            self._source = (direct, False) if direct else await self._first_source()
                            await self._fetch_parts(concurrency)
                        whole = await self._hashed.digest(self.desc.size)
                    finally:
                        self._hashed = None  # a repair re-fetches without it
                await self._repair(fd, whole, concurrency, direct)
                deferred = self.fsync == "deferred" and self.desc.size >= DEFER_FLUSH_MIN
                if self.fsync != "off" and not deferred:
                    os.fsync(fd)  # the data is durable before its name is
            finally:
                os.close(fd)
            self._report(force=True)
            self.store.publish_blob(Path(self.partial), self.digest, deferred=deferred)
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()

    async def _repair(self, fd: int, whole: Digest, concurrency: int, direct: str | None) -> None:
        """Make the file match the digest, re-fetching only damaged chunks where chunk digests
        say which ones; raise when that cannot be done."""
        attempts = 0
        while whole != self.digest:
            bad = await anyio.to_thread.run_sync(self._damaged, fd) if self.chunks else []
            if not bad:
                await anyio.to_thread.run_sync(self._discard)
                raise errors.IntegrityError(
                    f"digest mismatch, file must be downloaded again: want {self.digest}, got {whole}"
                )
            attempts += 1
            for part in self.parts:
                if any(c.offset <= part.offset < c.offset + c.size for c in bad):
                    part.completed = 0
            self._save_state()
            if attempts >= CHUNK_ATTEMPTS:
                spans = ", ".join(f"{c.offset}-{c.offset + c.size - 1}" for c in bad)
                raise errors.TransferFailed(
                    f"pull {self.digest.short}: bytes {spans} keep arriving damaged; the registry's copy may be "
                    "corrupt. Every good chunk is kept: run the pull again once the registry is repaired, and "
                    "only the damaged chunks will be fetched."
                )
            if not direct and self._source == (self.blob_url, True):
                self._source = await self._resolve_source()
            await self._fetch_parts(concurrency)
            whole = Digest(await anyio.to_thread.run_sync(_sha256, fd, 0, self.desc.size))

    def _damaged(self, fd: int) -> list[Chunk]:
        return [c for c in self.chunks or [] if _sha256(fd, c.offset, c.offset + c.size) != c.digest]

    # -- planning and state ----------------------------------------------------------------------

    def _plan(self, chunks: list[Chunk] | None, part_size: int) -> tuple[list[Part], list[Chunk] | None]:
        if chunks:
            return [Part(c.offset, c.size) for c in chunks], chunks
        # However small the configured part size, a huge blob gets a bounded plan.
        part_size = max(part_size, -(-self.desc.size // MAX_PLANNED_PARTS))
        return plan_parts(self.desc.size, part_size), None

    def _load_state(self, chunks: list[Chunk] | None) -> tuple[list[Part], list[Chunk] | None] | None:
        try:
            doc = json.loads(self.state_path.read_text())
            if (
                doc.get("version") not in (2, STATE_VERSION)
                or doc.get("digest") != str(self.digest)
                or doc.get("size") != self.desc.size
                or self.partial.stat().st_size != self.desc.size
            ):
                return None
            parts = [Part(int(p["offset"]), int(p["size"]), int(p["completed"])) for p in doc["parts"]]
            if doc["version"] == 2:  # one part per chunk, each with its chunk's digest
                sums = [p.get("chunk") for p in doc["parts"]]
                saved = [Chunk(d, q.offset, q.size) for d, q in zip(sums, parts, strict=True)] if all(sums) else None
            else:
                saved = [Chunk(str(d), int(o), int(n)) for d, o, n in doc["chunks"]] if doc["chunks"] else None
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        expected = 0
        for part in parts:
            if part.offset != expected or part.size <= 0 or not 0 <= part.completed <= part.size:
                return None
            expected += part.size
        if expected != self.desc.size:
            return None
        if chunks and saved != chunks:
            return None  # the registry now chunks differently: start over rather than guess
        return parts, saved

    def _save_state(self) -> None:
        """Write the part state (on the event loop, where parts are split, so it never sees one
        shrunk before its other half is in the list)."""
        doc = {
            "version": STATE_VERSION,
            "digest": str(self.digest),
            "size": self.desc.size,
            "parts": [{"offset": p.offset, "size": p.size, "completed": p.completed} for p in self.parts],
            "chunks": [[c.digest, c.offset, c.size] for c in self.chunks] if self.chunks else None,
        }
        # Bytes written are in the page cache, which outlives a killed process; after a power cut
        # the state may claim bytes the disk lost, and the digest checks catch that (costing the
        # damaged chunks, or the blob without chunk digests). Syncing here instead stalled the
        # download on the disk every second.
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.state_path)

    def _discard(self) -> None:
        for path in (self.partial, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- where the bytes are ---------------------------------------------------------------------

    async def _chunk_sums(self) -> tuple[list[Chunk] | None, str | None]:
        """``(chunks, direct URL)`` from a Hangar registry, else ``(None, None)``."""
        url = f"{self.base}/v2/{self.repository}/chunksums/{self.digest}"
        what = f"pull {self.digest.short}: chunk sums"
        try:
            response = await send(self.http, "GET", url, what=what, stream=True, allow=_ANY_ERROR)
            if response.status_code != 200:
                await response.aclose()
                return None, None
            # Sized by the blob: chunks under MIN_CHUNK_SIZE are refused below anyway, so a longer
            # answer (two million one-byte chunks, an endless or gzip-bombed body) is not read.
            body = await read_body(response, chunk_sums_limit(self.desc.size), what)
        except errors.RegistryError:
            return None, None  # optional: verify the blob whole instead
        chunks: list[Chunk] = []
        expected = 0
        try:
            for line in body.decode().splitlines():
                digest, span = line.split(" ")
                first, last = (int(x) for x in span.split("-"))
                if first != expected or last < first:
                    return None, None
                if (chunks and chunks[-1].size < MIN_CHUNK_SIZE) or len(chunks) >= MAX_CHUNKS:
                    return None, None  # only the last chunk may be small
                chunks.append(Chunk(Digest.parse(digest).hex, first, last - first + 1))
                expected = last + 1
        except ValueError:
            return None, None
        if expected != self.desc.size:
            return None, None
        location = response.headers.get("content-location")
        return chunks, str(response.url.join(location)) if location else None

    async def _first_source(self) -> tuple[str, bool]:
        """The URL to read parts from, asked again with back-off while the registry cannot be
        reached for a moment (a restart between two blobs), as the parts' own retries do."""
        failures = 0
        while True:
            try:
                return await self._resolve_source()
            except errors.RegistryUnreachable:
                failures += 1
                if failures >= MAX_ATTEMPTS:
                    raise
                await asyncio.sleep(backoff(failures))

    async def _resolve_source(self) -> tuple[str, bool]:
        """The URL to read parts from, and whether it needs our credentials."""
        url = self.blob_url
        for _ in range(10):
            response = await send(
                self.http, "GET", url, headers={"Range": "bytes=0-0"}, stream=True, what=f"pull {self.digest.short}"
            )
            await response.aclose()
            location = response.headers.get("location")
            if response.is_redirect and location:
                target = response.url.join(location)
                refuse_downgrade(self.base, target, f"pull {self.digest.short}")
                if not same_origin(target, self.base):
                    # Another origin (CDN, object store): presigned, and our token is not for it.
                    return str(target), False
                url = str(target)
                continue
            if location:  # 200/206 with a Location: a self-authorising direct URL
                return str(response.url.join(location)), False
            return url, True
        raise errors.RequestFailed(f"pull {self.digest.short}: too many redirects", 310)

    async def _renew_source(self, generation: int) -> None:
        """A direct URL stopped working (expired) or our token did: get fresh ones, once for all
        the workers that noticed."""
        async with self._source_lock:
            if generation != self._source_generation:
                return
            self._source = await self._resolve_source()  # also renews the token through httpx
            self._source_generation += 1

    # -- transfer --------------------------------------------------------------------------------

    async def _fetch_parts(self, concurrency: int) -> None:
        waiting = [part for part in self.parts if not part.done]
        waiting.reverse()  # popped from the end: in offset order

        active: list[Part] = []
        part_ended = asyncio.Event()

        async def worker() -> None:
            while True:
                part = waiting.pop() if waiting else self._take_over()
                if part is None:
                    if not any(p.size - p.completed >= 2 * MIN_SPLIT for p in active):
                        return
                    # A part big enough to split is not streaming yet (still waiting for its
                    # answer, or between retries): look again soon, or when a part ends.
                    part_ended.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(part_ended.wait(), TAKE_OVER_POLL)
                    continue
                active.append(part)
                try:
                    await self._fetch_part(part)
                finally:
                    active.remove(part)
                    part_ended.set()

        saver = asyncio.create_task(self._save_periodically())
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(concurrency if waiting else 0):
                    tg.create_task(worker())
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        finally:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
            self._save_state()

    async def _save_periodically(self) -> None:
        # On the event loop, not in a thread: a write cancelled with this task would go on in its
        # thread and race the final save for the same temporary file (a few KB: it takes well
        # under a millisecond).
        while True:
            await asyncio.sleep(SAVE_EVERY)
            self._save_state()

    def _take_over(self) -> Part | None:
        """Work for a worker with no part left to start: the second half of what the streaming
        part with the most bytes to go still lacks. So the end of a pull does not wait on its
        slowest connection (the "stuck at 99%" of Ollama's issues); parts never grow, so the
        pieces stay inside their chunk. Only parts whose server answered 206 are split: one that
        ignores Range (200, the whole blob) would answer the new piece the same way."""
        part = max(self._streaming, key=lambda p: p.size - p.completed, default=None)
        if part is None or part.size - part.completed < 2 * MIN_SPLIT:
            return None
        keep = (part.size - part.completed) // 2
        tail = Part(part.next_byte + keep, part.size - part.completed - keep)
        part.size -= tail.size  # its request stops at the new end
        index = next(i for i, p in enumerate(self.parts) if p is part)
        self.parts.insert(index + 1, tail)
        return tail

    async def _fetch_part(self, part: Part) -> None:
        failures = 0
        while not part.done:
            before = part.completed
            generation = self._source_generation
            try:
                await self._fetch_range(part)
            except _SourceRefused:
                failures += 1
                if failures >= MAX_ATTEMPTS:
                    raise errors.TransferFailed(f"pull {self.digest.short}: the registry keeps refusing") from None
                try:
                    await self._renew_source(generation)
                except errors.RegistryUnreachable:  # down for a moment (a restart): the next try asks again
                    await asyncio.sleep(backoff(failures))
            except (aiohttp.ClientError, TimeoutError, _Retryable, _BadRange) as e:
                if part.completed > before and not isinstance(e, _TooSlow):
                    failures = 0  # progress refills the retry budget (a crawl is no progress)
                failures += 1
                if isinstance(e, _BadRange) or failures >= MAX_ATTEMPTS:
                    raise errors.TransferFailed(
                        f"pull {self.digest.short}: giving up after {failures} attempts: {e or type(e).__name__}. "
                        "Run the pull again to resume from here."
                    ) from None
                await asyncio.sleep(backoff(failures))
        if self.fsync == "before":
            start_writeback(self._fd, part.offset, part.size)
        self._hash_done_prefix()

    async def _fetch_range(self, part: Part) -> None:
        url, with_auth = self._source
        headers = {"Range": f"bytes={part.next_byte}-{part.last_byte}"}
        credentials = bearer_headers(self.http, url)  # none off the registry's origin; no http after https
        if with_auth:
            headers.update(credentials)
        timeout = aiohttp.ClientTimeout(sock_connect=15, sock_read=STALL_SECONDS)
        async with self.data.get(url, headers=headers, timeout=timeout, allow_redirects=False) as response:
            if response.status in (401, 403):
                raise _SourceRefused(f"HTTP {response.status}")
            if response.status >= 500:
                raise _Retryable(f"the registry answered {response.status}")
            ranged = response.status == 206
            whole = response.status == 200 and part.next_byte == 0 and part.size == self.desc.size
            if not ranged and not whole:
                raise _BadRange(f"the server answered a Range request with status {response.status}")
            if ranged:
                self._streaming.append(part)
            try:
                await self._receive(response, part)
            finally:
                self._streaming = [p for p in self._streaming if p is not part]
            if not part.done:
                raise _Retryable("the response ended early")

    async def _receive(self, response: aiohttp.ClientResponse, part: Part) -> None:
        """Write the body at the part's offsets until the part is done; give the part up for a
        retry (which resumes it) when it crawls below the minimum rate."""
        rate = MIN_RATE if not self.limiter.rate else min(MIN_RATE, self.limiter.rate // 16)
        window_start, window_bytes = time.monotonic(), 0
        async for chunk in response.content.iter_any():
            now = time.monotonic()
            if now - window_start >= MIN_RATE_WINDOW:
                if window_bytes < rate * (now - window_start):
                    raise _TooSlow(f"the transfer crawls ({window_bytes} bytes in {now - window_start:.0f} s)")
                window_start, window_bytes = now, 0
            window_bytes += len(chunk)
            pos = part.next_byte
            n = min(len(chunk), part.offset + part.size - pos)  # the part may shrink meanwhile
            if self.limiter.rate:
                await self.limiter.consume(n)
                n = min(n, part.offset + part.size - pos)  # split while we waited
            # A plain write into the page cache: no zero-filled pages to fault in first, which is
            # what writing through a memory map of the sparse file cost (most of the client's CPU
            # time). Writes this small do not block the loop for long.
            _write_at(self._fd, memoryview(chunk)[:n], pos)
            part.completed += n
            self.bytes_fetched += n
            self._report()
            if part.done:
                break

    def _hash_done_prefix(self) -> None:
        """Hand the hashing thread the part of the file's completed prefix it has not had yet.
        (Parts before the first unfinished one never change again: a take-over splits only
        unfinished parts, so counting from where the last call stopped is enough.)"""
        if not self._hashed:
            return
        n = self._hashed_parts
        while n < len(self.parts) and self.parts[n].done:
            n += 1
        if n > self._hashed_parts:
            self._hashed_parts = n
            last = self.parts[n - 1]
            self._hashed.prefix_done(last.offset + last.size)


def _write_at(fd: int, data: memoryview, pos: int) -> None:
    while data:
        n = os.pwrite(fd, data, pos)
        data, pos = data[n:], pos + n


def _hash_range(h: hashlib._Hash, fd: int, start: int, end: int) -> None:
    """Feed bytes ``[start, end)`` of the file to ``h``, through read-only maps of the page cache
    (cheaper than copying them out with read)."""
    if os.fstat(fd).st_size < end:  # mapping past the end would kill us with SIGBUS
        raise errors.IntegrityError(f"the partial file is shorter than {end} bytes; pull again")
    while start < end:
        base = start - start % mmap.ALLOCATIONGRANULARITY
        length = min(end, base + MAP_WINDOW) - base
        with mmap.mmap(fd, length, prot=mmap.PROT_READ, offset=base) as window:
            view = memoryview(window)
            try:
                h.update(view[start - base :])
            finally:
                view.release()
        start = base + length


class _PrefixHash:
    """The sha256 of a partial file, computed in one background thread over its completed prefix
    as the parts arrive, so little is left to hash when the last one does. (Hashing received
    chunks straight from memory was slower: the thread then fights the event loop for the GIL on
    every chunk, and reading back through a map of the page cache costs almost nothing.)"""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._h = hashlib.sha256()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="hangar-hash")
        self._pending: list[Future[None]] = []
        self._queued = 0  # bytes [0, queued) are hashed or on their way to the thread

    def __enter__(self) -> _PrefixHash:
        return self

    def __exit__(self, *exc: object) -> None:
        # Before the file is closed: nothing may read its descriptor afterwards.
        self._thread.shutdown(wait=True, cancel_futures=True)

    def prefix_done(self, end: int) -> None:
        """Bytes ``[0, end)`` of the file are complete."""
        while end > self._queued:  # a window at a time, so that stopping drops the rest at once
            step = min(end, self._queued + MAP_WINDOW)
            self._pending.append(self._thread.submit(_hash_range, self._h, self._fd, self._queued, step))
            self._queued = step

    async def digest(self, size: int) -> Digest:
        self.prefix_done(size)
        for done in self._pending:
            await asyncio.wrap_future(done)
        return Digest(self._h.hexdigest())


_ANY_ERROR = tuple(range(400, 600))  # statuses send() returns instead of raising


class _BadRange(Exception):
    pass


class _Retryable(Exception):
    pass


class _SourceRefused(Exception):
    pass


class _TooSlow(_Retryable):
    pass


def _sha256(fd: int, start: int, end: int) -> str:
    h = hashlib.sha256()
    _hash_range(h, fd, start, end)
    return h.hexdigest()
