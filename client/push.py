"""Pushing a model: each blob the registry lacks, then the manifest.

For each blob: ``HEAD`` (present: skip); a layer inherited ``from`` another model is mounted
from that repository when the registry allows; otherwise an upload session takes the blob in
``PATCH`` chunks. The session URL and the registry's idea of how much it holds are the only
state, so a push stopped at any point resumes: ``.hangar/push/<host>/<repo>/<hex>.json`` keeps
the session URL, and a ``GET`` on it says where to continue (the registry is the authority, not
the client's memory). The manifest goes last, byte for byte as it is in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx

from client import errors
from client.config import ClientSettings
from client.credentials import push_scopes
from client.http import make_client, registry_url, send
from client.progress import Progress, ProgressCallback, no_progress
from client.store import Store
from client.transfer import MAX_ATTEMPTS, BandwidthLimiter, Throttle, backoff
from formats.digest import Digest
from formats.manifest import Descriptor
from formats.names import ModelName, NameParseError

READ_CHUNK = 1024 * 1024

# A PATCH cut before its end keeps nothing, so after such a cut the next ones are smaller, down
# to this (a path that drops connections every few MiB still finishes; S3 buffers small ones).
MIN_RETRY_CHUNK = 1024 * 1024


@dataclass
class PushOptions:
    insecure: bool = False
    part_size: int | None = None
    max_rate: int | None = None


@dataclass
class PushResult:
    bytes_sent: int  # blob bytes that crossed the network in this run
    skipped: int  # blobs the registry already had (or mounted)


async def push(
    name: ModelName,
    store: Store,
    settings: ClientSettings,
    options: PushOptions | None = None,
    progress: ProgressCallback = no_progress,
) -> PushResult:
    options = options or PushOptions()
    progress(Progress("retrieving manifest"))
    model = store.get(name)
    base = registry_url(name, settings, options.insecure)
    limiter = BandwidthLimiter(options.max_rate or settings.max_rate)
    result = PushResult(0, 0)
    blobs = [*model.manifest.layers, *([model.manifest.config] if model.manifest.config else [])]
    sources = [s for s in (_mount_source(d, name) for d in blobs) if s]
    async with make_client(settings, base, scopes=push_scopes(name.repository, sources), connections=4) as http:
        seen: set[Digest] = set()
        for desc in blobs:
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            if not store.has_blob(desc.digest, desc.size):
                raise errors.IntegrityError(f"blob {desc.digest} of {name.display()} is missing from the local store")
            upload = BlobUpload(http, store, base, name, desc, limiter, progress)
            try:
                await upload.run(options.part_size or settings.part_size)
            finally:
                result.bytes_sent += upload.bytes_sent
            result.skipped += upload.skipped
        progress(Progress("pushing manifest"))
        await send(
            http, "PUT", f"{base}/v2/{name.repository}/manifests/{name.tag}",
            content=model.manifest.raw, headers={"Content-Type": model.manifest.media_type},
            what=f"push {name.display()}",
        )  # fmt: skip
    progress(Progress("success"))
    return result


class BlobUpload:
    def __init__(
        self,
        http: httpx.AsyncClient,
        store: Store,
        base: str,
        name: ModelName,
        desc: Descriptor,
        limiter: BandwidthLimiter,
        progress: ProgressCallback,
    ) -> None:
        self.http = http
        self.store = store
        self.base = base
        self.name = name
        self.desc = desc
        self.digest = desc.digest
        self.limiter = limiter
        self.path = store.blob_path(desc.digest)
        self.state_path = store.push_dir / name.host.replace(":", "_") / name.repository / f"{desc.digest.hex}.json"
        self.what = f"push {desc.digest.short}"
        self.offset = 0
        self.bytes_sent = 0
        self.skipped = False
        self._report = Throttle(lambda: progress(Progress(
            f"pushing {self.digest.short}", str(self.digest), self.desc.size, self.offset)))  # fmt: skip

    async def run(self, part_size: int) -> None:
        blob_url = f"{self.base}/v2/{self.name.repository}/blobs/{self.digest}"
        head = await send(self.http, "HEAD", blob_url, what=self.what, allow=(404,))
        if head.status_code == 200:
            self.offset = self.desc.size
            self.skipped = True
            self._report(force=True)
            return
        location = await self._resume() or await self._start()
        if location is None:  # mounted
            self.offset = self.desc.size
            self.skipped = True
            self._report(force=True)
            return
        failures = 0
        chunk = part_size  # halved after a cut that kept nothing, so a flaky path still moves
        while self.offset < self.desc.size:
            end = min(self.offset + chunk, self.desc.size)
            try:
                location = await self._patch(location, self.offset, end)
                self.offset = end
                self._save(location)
                failures = 0
                chunk = min(part_size, chunk * 2)
            # StreamConsumed: the token expired under this part (401); the auth flow got a new
            # one but cannot send a streamed part twice, so the part goes again from the offset.
            except (errors.RegistryUnreachable, errors.RequestFailed, httpx.TransportError, httpx.StreamConsumed) as e:
                if isinstance(e, errors.RequestFailed) and e.status < 500 and e.status != 416:
                    raise
                failures += 1
                if failures >= MAX_ATTEMPTS:
                    raise errors.TransferFailed(
                        f"{self.what}: giving up after {failures} attempts: {e}. Run the push again to resume."
                    ) from None
                await asyncio.sleep(backoff(failures))
                attempted = self.offset
                self.offset = await self._query_offset(location)
                if self.offset > attempted:
                    failures = 0  # the registry kept what arrived before the cut: progress refills the budget
                else:
                    chunk = max(MIN_RETRY_CHUNK, chunk // 2)
            self._report()
        # Keep the session URL's own query (distribution's _state) and add the digest.
        final = httpx.URL(location).copy_merge_params({"digest": str(self.digest)})
        await send(self.http, "PUT", str(final), what=self.what)
        self._forget()
        self._report(force=True)

    async def _start(self) -> str | None:
        """Mount when the layer names its origin, else open a session; None means mounted."""
        url = f"{self.base}/v2/{self.name.repository}/blobs/uploads/"
        source = _mount_source(self.desc, self.name)
        if source is not None:
            r = await send(self.http, "POST", url, params={"mount": str(self.digest), "from": source}, what=self.what)
            if r.status_code == 201:
                return None
        else:
            r = await send(self.http, "POST", url, what=self.what)
        location = str(r.url.join(r.headers.get("docker-upload-location") or r.headers["location"]))
        self._save(location)
        return location

    async def _resume(self) -> str | None:
        try:
            location = json.loads(self.state_path.read_text())["location"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        try:
            self.offset = await self._query_offset(location)
        except errors.NotFound:  # the registry purged or finished that session
            self._forget()
            return None
        return str(location)

    async def _query_offset(self, location: str) -> int:
        r = await send(self.http, "GET", location, what=self.what)
        if "upload-offset" in r.headers:
            return int(r.headers["upload-offset"])
        # Distribution says "0-0" both for nothing and for one byte; one byte again is cheap.
        last = int(r.headers.get("range", "0-0").split("-")[-1])
        return last + 1 if last > 0 else 0

    async def _patch(self, location: str, start: int, end: int) -> str:
        r = await send(
            self.http, "PATCH", location,
            content=self._read(start, end),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(end - start),
                "Content-Range": f"{start}-{end - 1}",
            },
            what=self.what,
        )  # fmt: skip
        return str(r.url.join(r.headers.get("docker-upload-location") or r.headers.get("location") or location))

    async def _read(self, start: int, end: int) -> AsyncIterator[bytes]:
        with open(self.path, "rb") as f:
            pos = start
            while pos < end:
                chunk = await anyio.to_thread.run_sync(os.pread, f.fileno(), min(READ_CHUNK, end - pos), pos)
                if not chunk:
                    raise errors.IntegrityError(f"{self.path} is shorter than its manifest says")
                await self.limiter.consume(len(chunk))
                pos += len(chunk)
                self.bytes_sent += len(chunk)
                yield chunk

    def _save(self, location: str) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps({"location": location, "digest": str(self.digest)}))
        os.replace(tmp, self.state_path)

    def _forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()


def _mount_source(desc: Descriptor, target: ModelName) -> str | None:
    """The repository a layer came from (Ollama's ``from``), if it is another one."""
    if not desc.parent:
        return None
    try:
        parent = ModelName.parse(desc.parent, default_host=target.host)
    except NameParseError:
        return None
    if parent.host.lower() != target.host.lower() or parent.repository.lower() == target.repository.lower():
        return None
    return parent.repository
