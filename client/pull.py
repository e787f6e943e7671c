"""Pulling a model: manifest, then every missing blob, then the manifest into the store.

A blob is fetched as parallel ``Range`` parts written at their offsets into
``blobs/sha256-<hex>-partial``. Which bytes of each part are on disk is saved in
``sha256-<hex>-partial.json`` (after the data is flushed), so a pull stopped by Ctrl-C, kill -9,
a reboot, a registry restart or a network cut resumes where it stopped. A blob is hashed whole
before it is renamed into place; a mismatch discards it. The manifest is written last.

Where the bytes come from: a registry that answers the blob GET with a ``Location`` (ours, a
signed URL; ollama.com, a CDN via 307) is read from that URL without credentials; a plain OCI
registry (no ``Location``) is read from the blob URL itself, with credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from client import errors
from client.config import ClientSettings
from client.http import make_client, registry_url, send
from client.store import LocalModel, Store
from client.transfer import (
    MAX_ATTEMPTS,
    STALL_SECONDS,
    Part,
    Progress,
    ProgressCallback,
    RateLimiter,
    Throttle,
    backoff,
    no_progress,
    plan_parts,
)
from registry.oci import mediatypes as mt
from registry.oci.digest import Digest
from registry.oci.manifest import Descriptor, Manifest, ManifestError
from registry.oci.names import ModelName

ACCEPT = ", ".join([mt.DOCKER_MANIFEST, mt.OCI_MANIFEST])
STATE_VERSION = 1
SAVE_EVERY = 1.0  # seconds between part-state saves
HASH_CHUNK = 4 * 1024 * 1024


@dataclass
class PullOptions:
    insecure: bool = False
    concurrency: int | None = None
    part_size: int | None = None
    max_rate: int | None = None


async def pull(
    name: ModelName,
    store: Store,
    settings: ClientSettings,
    options: PullOptions | None = None,
    progress: ProgressCallback = no_progress,
) -> LocalModel:
    options = options or PullOptions()
    store.ensure()
    base = registry_url(name, settings, options.insecure)
    concurrency = options.concurrency or settings.concurrency
    limiter = RateLimiter(options.max_rate or settings.max_rate)
    async with make_client(settings, name.host, connections=concurrency + 2) as http:
        progress(Progress("pulling manifest"))
        response = await send(
            http, "GET", f"{base}/v2/{name.repository}/manifests/{name.tag}",
            headers={"Accept": ACCEPT}, what="pull model manifest",
        )  # fmt: skip
        raw = response.content
        try:
            manifest = Manifest.parse(raw, response.headers.get("content-type"))
        except ManifestError as e:
            raise errors.IntegrityError(f"pull model manifest: the registry sent an invalid manifest: {e}") from None
        if manifest.is_index:
            raise errors.RequestFailed(f"{name.display()} is a multi-platform index; Hangar pulls single models", 415)
        docker_digest = response.headers.get("docker-content-digest")
        if docker_digest and docker_digest != str(manifest.digest):
            raise errors.IntegrityError(
                f"manifest digest mismatch: the registry says {docker_digest}, the bytes are {manifest.digest}"
            )

        # Layers then config, as Ollama orders them.
        ordered = [*manifest.layers, *([manifest.config] if manifest.config else [])]
        blobs = list({d.digest: d for d in ordered}.values())
        while True:
            for desc in blobs:
                if store.has_blob(desc.digest, desc.size):
                    progress(Progress(f"pulling {desc.digest.short}", str(desc.digest), desc.size, desc.size))
                    continue
                download = BlobDownload(http, store, base, name.repository, desc, limiter, progress)
                await download.run(concurrency, options.part_size or settings.part_size)
            progress(Progress("verifying sha256 digest"))
            # Under the lock `hangar rm` takes, so it cannot delete a blob we count on (if it
            # already did, fetch it again).
            async with _locked(store, "manifests"):
                if all(store.has_blob(d.digest, d.size) for d in blobs):
                    progress(Progress("writing manifest"))
                    store.put_manifest(name, raw)
                    break
        progress(Progress("success"))
    return store.get(name)


@contextlib.asynccontextmanager
async def _locked(store: Store, key: str) -> AsyncIterator[None]:
    """Hold a store lock from async code (the wait happens in a thread)."""
    cm = store.lock(key)
    await anyio.to_thread.run_sync(cm.__enter__)
    try:
        yield
    finally:
        cm.__exit__(None, None, None)


class BlobDownload:
    def __init__(
        self,
        http: httpx.AsyncClient,
        store: Store,
        base: str,
        repository: str,
        desc: Descriptor,
        limiter: RateLimiter,
        progress: ProgressCallback,
    ) -> None:
        self.http = http
        self.store = store
        self.blob_url = f"{base}/v2/{repository}/blobs/{desc.digest}"
        self.desc = desc
        self.limiter = limiter
        self.digest = desc.digest
        self.partial = store.partial_path(desc.digest)
        self.state_path = self.partial.with_name(self.partial.name + ".json")
        self.parts: list[Part] = []
        self.bytes_fetched = 0  # over the network, this run (tests assert on it)
        self._report = Throttle(lambda: progress(Progress(
            f"pulling {self.digest.short}", str(self.digest), self.desc.size, self.completed)))  # fmt: skip

    @property
    def completed(self) -> int:
        return sum(p.completed for p in self.parts)

    async def run(self, concurrency: int, part_size: int) -> None:
        async with _locked(self.store, f"blob-{self.digest.hex}"):
            if self.store.has_blob(self.digest, self.desc.size):  # another process got it first
                self.parts = [Part(0, self.desc.size, self.desc.size)]
                self._report(force=True)
                return
            self.parts = self._load_state() or plan_parts(self.desc.size, part_size)
            fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size != self.desc.size:
                    os.ftruncate(fd, self.desc.size)
                self._report(force=True)
                if any(not p.done for p in self.parts):
                    source, with_auth = await self._resolve_source()
                    await self._fetch_parts(fd, source, with_auth, concurrency)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._report(force=True)
            await anyio.to_thread.run_sync(self._verify_and_publish)

    # -- state -----------------------------------------------------------------------------

    def _load_state(self) -> list[Part] | None:
        try:
            doc = json.loads(self.state_path.read_text())
            if (
                doc.get("version") == STATE_VERSION
                and doc.get("digest") == str(self.digest)
                and doc.get("size") == self.desc.size
                and self.partial.stat().st_size == self.desc.size
            ):
                parts = [Part(int(p["offset"]), int(p["size"]), int(p["completed"])) for p in doc["parts"]]
                if sum(p.size for p in parts) == self.desc.size:
                    return parts
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pass
        return None

    def _save_state(self, fd: int) -> None:
        os.fdatasync(fd)  # data first: the state must never claim bytes that are not on disk
        doc = {
            "version": STATE_VERSION,
            "digest": str(self.digest),
            "size": self.desc.size,
            "parts": [{"offset": p.offset, "size": p.size, "completed": p.completed} for p in self.parts],
        }
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.state_path)

    def _discard(self) -> None:
        for path in (self.partial, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- transfer --------------------------------------------------------------------------

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
                if target.host != response.url.host:
                    return str(target), False  # another host (CDN, object store): presigned
                url = str(target)
                continue
            if location:  # 200/206 with a Location: a self-authorising direct URL
                return str(response.url.join(location)), False
            return url, True
        raise errors.RequestFailed(f"pull {self.digest.short}: too many redirects", 310)

    async def _fetch_parts(self, fd: int, source: str, with_auth: bool, concurrency: int) -> None:
        queue: asyncio.Queue[Part] = asyncio.Queue()
        for part in self.parts:
            if not part.done:
                queue.put_nowait(part)

        async def worker() -> None:
            while True:
                try:
                    part = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self._fetch_part(fd, part, source, with_auth)

        saver = asyncio.create_task(self._save_periodically(fd))
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(concurrency, queue.qsize())):
                    tg.create_task(worker())
        except BaseExceptionGroup as group:
            first = group.exceptions[0]
            raise first from None
        finally:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
            self._save_state(fd)

    async def _save_periodically(self, fd: int) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY)
            await anyio.to_thread.run_sync(self._save_state, fd)

    async def _fetch_part(self, fd: int, part: Part, source: str, with_auth: bool) -> None:
        failures = 0
        while not part.done:
            before = part.completed
            try:
                await self._fetch_range(fd, part, source, with_auth)
            except (errors.RegistryUnreachable, httpx.TransportError, _Stalled, _BadRange) as e:
                if part.completed > before:
                    failures = 0  # progress refills the retry budget
                failures += 1
                if isinstance(e, _BadRange) or failures >= MAX_ATTEMPTS:
                    raise errors.TransferFailed(
                        f"pull {self.digest.short}: giving up after {failures} attempts: {e}. "
                        "Run the pull again to resume from here."
                    ) from None
                await asyncio.sleep(backoff(failures))

    async def _fetch_range(self, fd: int, part: Part, source: str, with_auth: bool) -> None:
        headers = {"Range": f"bytes={part.next_byte}-{part.last_byte}"}
        auth = httpx.USE_CLIENT_DEFAULT if with_auth else None
        response = await send(self.http, "GET", source, headers=headers, stream=True, auth=auth,
                              what=f"pull {self.digest.short}")  # fmt: skip
        try:
            if response.status_code != 206:
                whole = response.status_code == 200 and part.next_byte == 0 and part.size == self.desc.size
                if not whole:
                    raise _BadRange(f"the server ignored the Range request (status {response.status_code})")
            chunks = response.aiter_raw(1024 * 1024)
            while not part.done:
                try:
                    chunk = await asyncio.wait_for(anext(chunks), STALL_SECONDS)
                except StopAsyncIteration:
                    raise httpx.ReadError("the response ended early") from None
                except TimeoutError:
                    raise _Stalled(f"no data for {STALL_SECONDS:.0f}s") from None
                chunk = chunk[: part.size - part.completed]
                await self.limiter.consume(len(chunk))
                await anyio.to_thread.run_sync(_pwrite_all, fd, chunk, part.next_byte)
                part.completed += len(chunk)
                self.bytes_fetched += len(chunk)
                self._report()
        finally:
            await response.aclose()

    def _verify_and_publish(self) -> None:
        h = hashlib.sha256()
        with open(self.partial, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
        actual = Digest(h.hexdigest())
        if actual != self.digest:
            self._discard()
            raise errors.IntegrityError(
                f"digest mismatch, file must be downloaded again: want {self.digest}, got {actual}"
            )
        self.store.publish_blob(Path(self.partial), self.digest)
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()


class _Stalled(Exception):
    pass


class _BadRange(Exception):
    pass


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
