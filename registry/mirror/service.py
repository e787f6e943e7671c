"""``Mirror``: the pull-through cache the registry's handlers call into (``registry.mirror.hooks``).

**Names.** A repository that is not one of the registry's own resolves to the upstream serving
its namespace (``--upstream NS=URL``, else the catch-all ``--upstream URL``), under the same name:
``library/gemma3`` here is the upstream's ``library/gemma3``. A local repository always wins.

**Manifests.** A tag is checked against the upstream at most once per ``--upstream-check-interval``
(a HEAD for its digest; the manifest is fetched only when it moved). A new manifest is answered at
once, straight from the upstream's bytes, and every blob it names that the store lacks starts
downloading (single-flight, ``registry.mirror.fetch``): the clients' blob requests then join
those downloads. The manifest is stored (tag included) once its blobs are; until then this worker
serves it from memory. When the upstream does not answer, a cached manifest is served with
``X-Hangar-Mirror: stale`` and a warning in the log. Every answer names its upstream
(``X-Hangar-Upstream``) and what happened (``X-Hangar-Mirror``: ``hit``, ``revalidated``, ``miss``,
``fetching`` (not stored yet: its blobs are on their way), ``stale``).

**Size.** With ``--cache-max-size``, once a manifest is stored the least recently used cached
repositories (not pinned, not being fetched) are dropped until the cached blobs fit; blobs that a
local repository also uses stay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from formats.digest import Digest
from formats.errorcodes import DistributionError
from formats.manifest import Manifest
from formats.names import repository_key, repository_namespace
from registry.config import Settings
from registry.db import utcnow
from registry.gc import collect, link_stored
from registry.meta import Metadata, StoredManifest
from registry.mirror.cache import CachedRepository, CacheState
from registry.mirror.config import Upstream, parse_cache_size, route
from registry.mirror.fetch import BlobFetcher, FetchFailed, Flight
from registry.mirror.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamManifest,
    UpstreamNotFound,
    UpstreamUnreachable,
)
from registry.storage import BlobInfo, BlobNotFound, ContentHash, VerifiedStore

log = logging.getLogger("hangar.registry.mirror")

MIRROR_HEADER = "X-Hangar-Mirror"
UPSTREAM_HEADER = "X-Hangar-Upstream"
TOUCH_EVERY = 30.0  # seconds: how often a hit rewrites a repository's last use


@dataclass(frozen=True, slots=True)
class MirrorBlob:
    """A blob on its way from the upstream: its size, and its bytes as they arrive."""

    size: int
    read: Callable[..., AsyncIterator[bytes]]  # (digest, offset=0, length=None), as VerifiedStore.read


class Mirror:
    def __init__(
        self,
        upstreams: list[Upstream],
        meta: Metadata,
        store: VerifiedStore,
        engine: Engine,
        data_dir: Path,
        *,
        check_interval: float = 300.0,
        max_size: int | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.meta = meta
        self.store = store
        self.cache = CacheState(engine)
        self.check_interval = check_interval
        self.max_size = max_size
        self.clients = {u.url: UpstreamClient(u) for u in upstreams}
        self.fetcher = BlobFetcher(store, data_dir / "mirror" / "partial", self._stored)
        # (repository key, reference lower-cased) -> (manifest, when fetched): answered from here
        # until it is stored with its blobs.
        self.pending: dict[tuple[str, str], tuple[StoredManifest, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._touched: dict[str, float] = {}
        self._evicting = asyncio.Lock()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.fetcher.aclose()
        for client in self.clients.values():
            await client.aclose()

    def route(self, name: str) -> Upstream | None:
        return route(self.upstreams, name)

    def serves(self, name: str) -> bool:
        """Whether an upstream serves ``name``'s namespace (``Authority.mirrored``)."""
        return self.route(name) is not None

    # -- manifests --------------------------------------------------------------------------

    async def manifest(self, name: str, reference: str) -> tuple[StoredManifest, dict[str, str]] | None:
        """The manifest for a mirrored name with the headers to add, or None: not mirrored (no
        upstream serves its namespace, or it is a local repository); the caller serves it."""
        upstream = self.route(name)
        if upstream is None:
            return None
        kind = await run_in_threadpool(self.cache.kind, name)
        if kind == "local":
            return None
        client = self.clients[upstream.url]
        headers = {UPSTREAM_HEADER: upstream.url}
        stored = await run_in_threadpool(self.meta.get_manifest, name, reference) if kind == "cached" else None
        pending = self.pending.get((repository_key(name), reference.lower()))
        fetched_at: float | None = None
        # Answered from memory while its blobs download: "fetching" (not stored yet).
        state = "hit"
        if stored is None and pending is not None:
            stored, fetched_at = pending
            state = "fetching"
        if reference.startswith("sha256:"):
            if stored is not None:  # content-addressed: never stale
                await self._touch(name)
                return stored, {**headers, MIRROR_HEADER: state}
            fetched = await self._upstream_call(client, name, reference, client.manifest(name, reference))
            return await self._ingest(client, upstream, name, None, fetched), {**headers, MIRROR_HEADER: "miss"}

        if stored is not None:
            if fetched_at is None:
                checked = await run_in_threadpool(self.cache.checked, name, reference)
                if checked is not None and checked[0] == stored.digest:
                    fetched_at = time.time() - (_age(checked[1]))
            if fetched_at is not None and time.time() - fetched_at < self.check_interval:
                await self._touch(name)
                return stored, {**headers, MIRROR_HEADER: state}
        try:
            if stored is not None:
                digest = await client.manifest_digest(name, reference)
                if digest == stored.digest:
                    if pending is None:
                        await run_in_threadpool(self.cache.set_checked, name, reference, digest)
                    await self._touch(name)
                    return stored, {**headers, MIRROR_HEADER: "revalidated" if state == "hit" else state}
            fetched = await client.manifest(name, reference)
        except UpstreamNotFound:
            raise DistributionError(
                "MANIFEST_UNKNOWN", detail={"reference": reference, "upstream": upstream.url}
            ) from None
        except UpstreamError as e:
            if stored is None:
                raise _unavailable(upstream, e) from None
            log.warning("mirror: %s: %s; serving the cached %s:%s", upstream.url, e, name, reference)
            return stored, {**headers, MIRROR_HEADER: "stale"}
        return await self._ingest(client, upstream, name, reference, fetched), {**headers, MIRROR_HEADER: "miss"}

    async def _upstream_call(self, client: UpstreamClient, name: str, reference: str, call: object) -> UpstreamManifest:
        try:
            assert asyncio.iscoroutine(call)
            result: UpstreamManifest = await call
            return result
        except UpstreamNotFound:
            raise DistributionError("MANIFEST_UNKNOWN", detail={"reference": reference}) from None
        except UpstreamError as e:
            raise _unavailable(client.upstream, e) from None

    async def _ingest(
        self, client: UpstreamClient, upstream: Upstream, name: str, tag: str | None, fetched: UpstreamManifest
    ) -> StoredManifest:
        """Answer with ``fetched`` now; fetch what it names that the store lacks; store it after."""
        parsed = Manifest.parse(fetched.content, fetched.media_type)
        if not await run_in_threadpool(self.cache.ensure, name, upstream.url):
            raise DistributionError("DENIED", f"{name} became a local repository meanwhile")
        stored = StoredManifest(fetched.digest, fetched.media_type, fetched.content)
        children: list[asyncio.Task[None]] = []
        for child in parsed.manifests:  # an index: its manifests first (put_manifest needs them)
            ref = str(child.digest)
            if await run_in_threadpool(self.meta.get_manifest, name, ref) is None and not self._is_pending(name, ref):
                sub = await self._upstream_call(client, name, ref, client.manifest(name, ref))
                await self._ingest(client, upstream, name, None, sub)
            task = self._completion(name, ref)
            if task is not None:
                children.append(task)
        flights: list[Flight] = []
        for desc in parsed.blobs():
            if await run_in_threadpool(self.meta.blob_size, name, desc.digest) is not None:
                continue
            # Shared by content: the upstream's manifest vouches that this repository has it.
            if await link_stored(self.meta, self.store, name, desc.digest) is None:
                flights.append(self.fetcher.fetch(client, name, desc.digest, desc.size))
        key = (repository_key(name), (tag or fetched.digest).lower())
        self.pending[key] = (stored, time.time())
        self.pending[(key[0], fetched.digest)] = (stored, time.time())
        task = asyncio.create_task(self._complete(name, tag, parsed, flights, children, key))
        task.set_name(f"mirror:{name}@{fetched.digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return stored

    def _is_pending(self, name: str, reference: str) -> bool:
        return (repository_key(name), reference.lower()) in self.pending

    def _completion(self, name: str, digest: str) -> asyncio.Task[None] | None:
        for task in self._tasks:
            if task.get_name() == f"mirror:{name}@{digest}":
                return task
        return None

    async def _complete(
        self,
        name: str,
        tag: str | None,
        parsed: Manifest,
        flights: list[Flight],
        children: list[asyncio.Task[None]],
        key: tuple[str, str],
    ) -> None:
        digest = str(parsed.digest)
        try:
            infos = await asyncio.gather(*(f.wait() for f in flights))
            await asyncio.gather(*children)
            for info in infos:  # linked already by the flight; again in case this name joined late
                await self._link(name, info)
            await run_in_threadpool(self.meta.put_manifest, name, parsed, tag)
            if tag is not None:
                await run_in_threadpool(self.cache.set_checked, name, tag, digest)
                # What the web site lists and searches, read from the blobs once, as for a push.
                from registry.web.catalog import summarize_pushed

                await summarize_pushed(self.meta, self.store, name, parsed.raw)
            log.info("mirror: cached %s:%s (%s)", name, tag or digest, digest)
        except (FetchFailed, UpstreamError) as e:
            log.warning("mirror: %s:%s not cached: %s", name, tag or digest, e)
            return  # nothing stored; the next request fetches it again
        except Exception as e:
            log.error("mirror: storing %s:%s failed: %s", name, tag or digest, e, exc_info=e)
            return
        finally:
            self.pending.pop(key, None)
            self.pending.pop((key[0], digest), None)
        await self.evict_to_limit()

    async def _touch(self, name: str) -> None:
        now = time.monotonic()
        if now - self._touched.get(name.lower(), -TOUCH_EVERY) >= TOUCH_EVERY:
            self._touched[name.lower()] = now
            await run_in_threadpool(self.cache.touch, name)

    # -- blobs --------------------------------------------------------------------------------

    async def blob(self, name: str, digest: Digest) -> MirrorBlob | None:
        """A blob of a mirrored name the repository does not link yet: joined to (or starting)
        its download. None: serve it as usual (not mirrored, local, or linked now)."""
        upstream = self.route(name)
        if upstream is None:
            return None
        # The flight first: one that ends meanwhile has linked the blob before it leaves the table,
        # so the database read below then sees the link.
        flight = self.fetcher.flights.get(digest)
        if flight is None and await run_in_threadpool(self.meta.blob_size, name, digest) is not None:
            return None
        if await run_in_threadpool(self.cache.kind, name) == "local":
            return None
        client = self.clients[upstream.url]
        if flight is None:
            try:
                await self.store.stat(digest)
            except BlobNotFound:
                flight = self.fetcher.fetch(client, name, digest)
            else:
                # The bytes are here (another repository's); link them if the upstream has them here.
                await self._upstream_has(client, name, digest)
                if not await run_in_threadpool(self.cache.ensure, name, upstream.url):
                    return None
                if await link_stored(self.meta, self.store, name, digest) is not None:
                    return None
                flight = self.fetcher.fetch(client, name, digest)  # gc deleted them meanwhile
        flight.repositories.add(name)
        try:
            size = await flight.wait_size()
        except FetchFailed as e:
            if isinstance(e.__cause__ or flight.error, UpstreamNotFound):
                raise DistributionError("BLOB_UNKNOWN", detail={"digest": str(digest)}) from None
            raise _unavailable(upstream, flight.error or e) from None
        await run_in_threadpool(self.cache.ensure, name, upstream.url)

        def read(_digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
            return flight.read(offset, length)

        return MirrorBlob(size, read)

    async def _upstream_has(self, client: UpstreamClient, name: str, digest: Digest) -> None:
        try:
            await client.has_blob(name, str(digest))
        except UpstreamNotFound:
            raise DistributionError("BLOB_UNKNOWN", detail={"digest": str(digest)}) from None
        except UpstreamError as e:
            raise _unavailable(client.upstream, e) from None

    async def _stored(self, flight: Flight, info: BlobInfo) -> None:
        for name in sorted(flight.repositories):
            info = await self._link(name, info)
        if flight.by_other_worker:
            return  # that worker reads its chunk sums back
        task = asyncio.create_task(self._chunk_sums(info))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _link(self, name: str, info: BlobInfo) -> BlobInfo:
        """Link a flight's blob into ``name``: under the claim its download made, or, stored by
        another worker (no claim here), taking a turn with gc first (``link_stored``)."""
        if info.generation is not None:
            await run_in_threadpool(self.meta.link_blob, name, info)
            return info
        linked = await link_stored(self.meta, self.store, name, info.digest)
        if linked is None:
            raise BlobNotFound(f"{info.digest} left the store before it was linked (gc); fetched again on request")
        return linked

    async def _chunk_sums(self, info: BlobInfo) -> None:
        """The 16 MiB chunk sums of a blob just stored, read back once in the background (the
        fetch hashes only the whole, to keep up with the upstream): else the first warm pull's
        ``chunksums`` request would wait while they are computed."""
        content = ContentHash()
        try:
            async for data in self.store.read(info.digest):
                await run_in_threadpool(content.update_chunks, data)
            await run_in_threadpool(self.meta.set_chunks, BlobInfo(info.digest, info.size, content.chunk_sums()))
        except Exception as e:  # the chunksums API computes them on first use instead
            log.warning("mirror: chunk sums of %s: %s", info.digest, e)

    # -- pushes -------------------------------------------------------------------------------

    async def refuse_push(self, name: str) -> None:
        """DENIED for a push into a namespace an upstream serves (but a local repository there,
        made by an administrator, takes pushes: ``registry.mirror.local``)."""
        upstream = self.route(name)
        if upstream is None or await run_in_threadpool(self.cache.kind, name) == "local":
            return
        namespace = repository_namespace(name)
        raise DistributionError(
            "DENIED",
            f"access denied: namespace {namespace} is a mirror of {upstream.url}; push to another namespace, or "
            f"have an administrator make {name} local (hangar registry cache make-local {name})",
        )

    # -- the size limit -----------------------------------------------------------------------

    def busy(self) -> set[str]:
        """Repository keys with a manifest or blob on its way (never evicted mid-pull)."""
        keys = {key for key, _ in self.pending}
        for flight in self.fetcher.flights.values():
            keys |= {name.lower() for name in flight.repositories}
        return keys

    async def evict_to_limit(self) -> list[str]:
        if self.max_size is None:
            return []
        async with self._evicting:
            return await evict(self.cache, self.meta, self.store, self.max_size, self.busy())


async def evict(
    cache: CacheState, meta: Metadata, store: VerifiedStore, max_size: int, busy: set[str] | None = None
) -> list[str]:
    """Drop least recently used cached repositories (not pinned, not busy) until the cached blobs
    take at most ``max_size`` bytes; the names dropped. Also what ``hangar registry cache evict``
    runs, outside the server."""
    dropped: list[str] = []
    total = await run_in_threadpool(cache.total_size)
    if total <= max_size:
        return dropped
    candidates: list[CachedRepository] = await run_in_threadpool(cache.cached)
    for repo in candidates:
        if total <= max_size:
            break
        if repo.pinned or repo.name.lower() in (busy or set()):
            continue
        await drop(cache, meta, store, repo.name)
        dropped.append(repo.name)
        total = await run_in_threadpool(cache.total_size)
    if total > max_size:
        log.warning("mirror: the cache holds %d bytes, over its %d byte limit, but what is left is pinned or in use",
                    total, max_size)  # fmt: skip
    if dropped:
        log.info("mirror: evicted %s", ", ".join(dropped))
    return dropped


async def drop(cache: CacheState, meta: Metadata, store: VerifiedStore, name: str) -> bool:
    """Remove one cached repository and the blobs nothing else uses; False if it is not cached."""
    digests = await run_in_threadpool(cache.drop, name)
    if digests is None:
        return False
    for digest in digests:
        await collect(meta, store, digest, utcnow())  # gc's own step, with its turns (registry.gc)
    return True


def _age(when: object) -> float:
    import datetime as dt

    assert isinstance(when, dt.datetime)
    return (dt.datetime.now(dt.UTC) - when).total_seconds()


def _unavailable(upstream: Upstream, error: BaseException) -> DistributionError:
    what = "is unreachable" if isinstance(error, UpstreamUnreachable) else "refused the mirror"
    return DistributionError("UNAVAILABLE", f"upstream {upstream.url} {what}: {error}")


def make_mirror(settings: Settings, meta: Metadata, store: VerifiedStore, engine: Engine) -> Mirror | None:
    """The mirror ``--upstream`` asks for, or None (a registry of its own models only)."""
    upstreams = settings.mirror_upstreams()
    if not upstreams:
        return None
    log.info("mirror of %s", ", ".join(str(u) for u in upstreams))
    return Mirror(
        upstreams,
        meta,
        store,
        engine,
        settings.resolved_data_dir,
        check_interval=settings.upstream_check_interval,
        max_size=parse_cache_size(settings.cache_max_size),
    )
