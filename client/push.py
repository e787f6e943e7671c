"""Pushing a model: each blob the registry lacks, then the manifest.

For each blob: ``HEAD`` (present: skip); a layer inherited ``from`` another model is mounted
from that repository when the registry allows; otherwise an upload session takes the blob in
``PATCH`` chunks. The session URL and the registry's idea of how much it holds are the only
state, so a push stopped at any point resumes: ``.hangar/push/<host>/<repo>/<hex>.json`` keeps
the session URL, and a ``GET`` on it says where to continue (the registry is the authority, not
the client's memory). The manifest goes last, byte for byte as it is in the store.

A registry whose blobs live in an object store may take the bytes there directly: asked with
``X-Redirect-Uploads: 1`` when the session starts, it says so with the same header, and then each
part is a ``PATCH`` without a body (its ``Content-Range`` only) answered by a ``307`` to a
presigned part URL, where the part goes, with no credentials, several at once. The final ``PUT``
names the S3 multipart ``etag`` of the parts (the MD5 of their ETags) so that the registry can
check it got what was sent; it verifies the sha256 itself. Anything but the ``307`` and the
client sends its parts through the registry as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx

from client import errors
from client.config import ClientSettings
from client.credentials import push_scopes
from client.http import TIMEOUT, USER_AGENT, make_client, registry_url, send
from client.progress import Progress, ProgressCallback, no_progress
from client.store import Store
from client.transfer import MAX_ATTEMPTS, BandwidthLimiter, Part, Throttle, backoff, plan_parts
from formats.digest import Digest
from formats.manifest import Descriptor
from formats.names import ModelName, NameParseError

READ_CHUNK = 1024 * 1024
MIN_STORE_PART = 5 * 1024 * 1024  # S3's smallest part (but the last): smaller blobs go through the registry
STORE_CONCURRENCY = 4  # parts in flight to the object store at once, per blob
_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')

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
        # The session sends its parts to the object store (the registry said so when it started).
        self.to_store = False
        self.part_size: int | None = None  # such a session's part size, fixed by its first part
        self.etags: dict[int, str] = {}  # part number -> the store's ETag of it
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
        if self.to_store and self.desc.size >= MIN_STORE_PART:
            self.part_size = self.part_size or max(part_size, MIN_STORE_PART)
            if await self._send_to_store(location, self.part_size):
                await self._finish(location, self._multipart_etag())
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
        await self._finish(location, None)

    async def _finish(self, location: str, etag: str | None) -> None:
        # Keep the session URL's own query (distribution's _state) and add the digest.
        params = {"digest": str(self.digest), **({"etag": etag} if etag else {})}
        final = httpx.URL(location).copy_merge_params(params)
        await send(self.http, "PUT", str(final), what=self.what)
        self._forget()
        self.offset = self.desc.size
        self._report(force=True)

    async def _send_to_store(self, location: str, part_size: int) -> bool:
        """Send the parts from ``self.offset`` on to the object store, each to the URL a
        body-less PATCH is redirected to; False (nothing sent) when the registry answers the first
        one otherwise: the parts then go through it."""
        parts = [p for p in plan_parts(self.desc.size, part_size) if p.offset >= self.offset]
        if self.offset % part_size:
            return False  # a session some other way began: it continues that way
        if not parts:
            return True
        done = self.offset
        timeout = httpx.Timeout(connect=15.0, read=TIMEOUT.read, write=TIMEOUT.write, pool=None)
        # No credentials of the registry's ever go to the store: a client of its own, without auth.
        async with httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT}, timeout=timeout, follow_redirects=False
        ) as store_http:

            async def one(part: Part, url: str | None) -> None:
                nonlocal done
                number = part.offset // part_size + 1
                failures = 0
                while True:
                    try:
                        if url is None:
                            url = await self._part_url(location, part)
                            if url is None:  # not a failure to retry: the session changed its way
                                raise errors.TransferFailed(
                                    f"{self.what}: the registry stopped taking parts through the object store. "
                                    "Run the push again."
                                )
                        etag = await self._put_part(store_http, url, part)
                        break
                    except (errors.RegistryUnreachable, errors.RequestFailed, httpx.TransportError) as e:
                        if isinstance(e, errors.RequestFailed) and e.status < 500 and e.status not in (403, 408, 429):
                            raise  # 403: the presigned URL expired; a new one comes with the retry
                        failures += 1
                        if failures >= MAX_ATTEMPTS:
                            raise errors.TransferFailed(
                                f"{self.what}: giving up on part {number} after {failures} attempts: {e}. "
                                "Run the push again to resume."
                            ) from None
                        await asyncio.sleep(backoff(failures))
                        url = None
                self.etags[number] = etag
                done += part.size
                self.offset = done
                self._save(location)
                self._report()

            first_url = await self._part_url(location, parts[0])
            if first_url is None:
                return False
            limit = asyncio.Semaphore(STORE_CONCURRENCY)

            async def bounded(part: Part, url: str | None) -> None:
                async with limit:
                    await one(part, url)

            try:
                async with asyncio.TaskGroup() as group:
                    for i, part in enumerate(parts):
                        group.create_task(bounded(part, first_url if i == 0 else None))
            except BaseExceptionGroup as failed:  # the first part that failed says why; the rest stopped
                raise failed.exceptions[0] from None
        return True

    async def _part_url(self, location: str, part: Part) -> str | None:
        """The presigned URL the registry redirects this part to, or None if it takes it itself."""
        r = await send(
            self.http, "PATCH", location, content=b"",
            headers={"Content-Range": f"{part.offset}-{part.last_byte}", "X-Redirect-Uploads": "1"},
            what=self.what, allow=(400, 416),
        )  # fmt: skip
        location = r.headers.get("location", "")
        if r.status_code != 307 or not location:
            return None
        # An absolute URL as it came: re-encoding a presigned URL's query could break its signature.
        return location if location.startswith(("http://", "https://")) else str(r.url.join(location))

    async def _put_part(self, store_http: httpx.AsyncClient, url: str, part: Part) -> str:
        """PUT one part to the object store; the store's ETag of it."""
        try:
            r = await store_http.put(
                url,
                content=self._read(part.offset, part.offset + part.size),
                headers={"Content-Length": str(part.size), "Content-Type": "application/octet-stream"},
            )
        except httpx.TransportError as e:
            raise errors.RegistryUnreachable(f"{self.what}: the object store: {e}") from None
        if r.status_code >= 300:
            raise errors.RequestFailed(
                f"{self.what}: the object store answered {r.status_code}: {r.text[:200]}", r.status_code
            )
        return str(r.headers.get("etag", ""))

    def _multipart_etag(self) -> str | None:
        """S3's ETag of the completed upload: the MD5 of the parts' MD5s, and their number; None
        when a part's ETag is not its MD5 (or was lost with an earlier run)."""
        count = -(-self.desc.size // (self.part_size or 1))
        digests = []
        for number in range(1, count + 1):
            m = _MD5_ETAG.fullmatch(self.etags.get(number, ""))
            if m is None:
                return None
            digests.append(bytes.fromhex(m.group(1)))
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{count}"

    async def _start(self) -> str | None:
        """Mount when the layer names its origin, else open a session; None means mounted."""
        url = f"{self.base}/v2/{self.name.repository}/blobs/uploads/"
        source = _mount_source(self.desc, self.name)
        if source is not None:
            params = {"mount": str(self.digest), "from": source}
            r = await send(self.http, "POST", url, params=params, headers={"X-Redirect-Uploads": "1"}, what=self.what)
            if r.status_code == 201:
                return None
        else:
            r = await send(self.http, "POST", url, headers={"X-Redirect-Uploads": "1"}, what=self.what)
        location = str(r.url.join(r.headers.get("docker-upload-location") or r.headers["location"]))
        self.to_store = r.headers.get("x-redirect-uploads") == "1"
        self._save(location)
        return location

    async def _resume(self) -> str | None:
        try:
            state = json.loads(self.state_path.read_text())
            location = state["location"]
            self.to_store = state.get("to_store") is True
            self.part_size = int(state["part_size"]) if state.get("part_size") else None
            self.etags = {int(n): str(e) for n, e in (state.get("etags") or {}).items()}
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
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
        state = {"location": location, "digest": str(self.digest), "to_store": self.to_store}
        if self.to_store:
            state.update(part_size=self.part_size, etags=self.etags)
        tmp.write_text(json.dumps(state))
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
