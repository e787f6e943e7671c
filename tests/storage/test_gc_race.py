"""gc and uploads of the same bytes at the same moment (registry.gc's turns on a blob's row), each
interleaving forced through gc's pause between taking a row and deleting its bytes, or by the order
of the calls: on the filesystem with SQLite, and on S3 (a real Swift) with PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from starlette.concurrency import run_in_threadpool

from formats.digest import Digest
from registry import db
from registry.db import utcnow
from registry.fsck import Fsck
from registry.gc import CLAIM_WAIT, PUBLISH_HOLD, claimer, execute, link_stored, plan_blobs, take_turns
from registry.meta import Metadata
from registry.storage import BlobBeingCollected, BlobInfo, VerifiedStore, put_blob
from registry.storage.filesystem import FilesystemStore
from registry.storage.s3 import S3Store
from tests.servers import PostgresCluster
from tests.storage.test_s3 import keys
from tests.swift import SwiftS3


@pytest.fixture(params=["filesystem", "s3"])
def wired(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Metadata, VerifiedStore]]:
    """The registry's metadata and blob store as its app wires them (publishes claim first)."""
    if request.param == "filesystem":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        store = VerifiedStore(FilesystemStore(tmp_path / "blobs"))
    else:
        url = request.getfixturevalue("postgres").create_database()
        store = VerifiedStore(request.getfixturevalue("s3_backend"))
    db.upgrade(url)
    meta = Metadata(db.make_engine(url, pooled=False))
    take_turns(store, meta)
    yield meta, store
    meta.engine.dispose()


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def digest(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


async def publish(store: VerifiedStore, data: bytes) -> BlobInfo:
    """An upload's commit: verified, claimed, published; not linked yet."""
    return await put_blob(store, uuid.uuid4().hex, digest(data), chunks(data), len(data))


async def push(meta: Metadata, store: VerifiedStore, repo: str, data: bytes) -> BlobInfo:
    info = await publish(store, data)
    await run_in_threadpool(meta.link_blob, repo, info)
    return info


async def orphan(meta: Metadata, store: VerifiedStore, data: bytes) -> None:
    """A blob pushed, then unlinked: gc's to delete."""
    await push(meta, store, "team/old", data)
    assert await run_in_threadpool(meta.unlink_blob, "team/old", digest(data))


async def read_all(store: VerifiedStore, d: Digest) -> bytes:
    return b"".join([c async for c in store.read(d)])


def test_a_push_published_before_gc_runs_and_linked_after_keeps_its_bytes(
    wired: tuple[Metadata, VerifiedStore],
) -> None:
    """The race gc had: an orphan planned for deletion, the same bytes pushed again and published
    (not yet linked) when gc reaches them. The push's claim holds the row: gc leaves it."""
    meta, store = wired
    data = os.urandom(100_000)

    async def go() -> None:
        await orphan(meta, store, data)
        plan = await plan_blobs(meta, grace=0)
        assert plan.blobs == [str(digest(data))]
        info = await publish(store, data)
        plan.cutoff = utcnow()  # the grace period alone would let the bytes go now: the hold keeps them
        done = await execute(meta, store, plan)
        assert done.blobs == []
        await run_in_threadpool(meta.link_blob, "team/new", info)
        assert await read_all(store, digest(data)) == data
        assert await run_in_threadpool(meta.blob_size, "team/new", digest(data)) == len(data)

    asyncio.run(go())


def test_a_push_that_meets_gc_deleting_the_bytes_publishes_them_after(
    wired: tuple[Metadata, VerifiedStore],
) -> None:
    """gc took the row and is about to delete the bytes when a push of the same bytes is ready to
    publish them: the push waits for gc to finish, then publishes and links its own."""
    meta, store = wired
    data = os.urandom(100_000)
    claim = store.claim
    assert claim is not None
    asking = asyncio.Event()

    async def claim_and_tell(d: Digest, size: int) -> str:
        asking.set()  # the push's bytes are verified: it asks to publish them
        return await claim(d, size)

    async def go() -> None:
        await orphan(meta, store, data)
        plan = await plan_blobs(meta, grace=0)
        tasks: list[asyncio.Task[BlobInfo]] = []

        async def pause(d: str) -> None:
            assert d == str(digest(data))
            # gc holds the row: nobody may publish these bytes until they are gone.
            assert await run_in_threadpool(meta.claim_blob, digest(data), len(data), 60.0) is None
            store.claim = claim_and_tell
            tasks.append(asyncio.create_task(push(meta, store, "team/new", data)))
            await asking.wait()

        done = await execute(meta, store, plan, pause)
        assert done.blobs == [str(digest(data))]  # the old bytes went...
        info = await tasks[0]  # ...and the push published its own after them
        assert info.generation is not None
        assert await read_all(store, digest(data)) == data
        assert await run_in_threadpool(meta.blob_size, "team/new", digest(data)) == len(data)

    asyncio.run(go())


def test_a_push_whose_hold_ran_out_before_gc_took_the_row_is_not_linked(
    wired: tuple[Metadata, VerifiedStore],
) -> None:
    """A push that published and then stalled past its hold (as if gone): gc may take the row and
    delete the bytes, and the push's link then fails instead of naming bytes that are gone."""
    meta, store = wired
    data = os.urandom(100_000)

    async def claim_without_hold(d: Digest, size: int) -> str:
        generation = await run_in_threadpool(meta.claim_blob, d, size, 0.0)
        assert generation is not None
        return generation

    async def go() -> None:
        store.claim = claim_without_hold
        info = await publish(store, data)
        done = await execute(meta, store, await plan_blobs(meta, grace=0))
        assert done.blobs == [str(digest(data))]
        with pytest.raises(BlobBeingCollected):
            await run_in_threadpool(meta.link_blob, "team/new", info)
        assert await run_in_threadpool(meta.blob_size, "team/new", digest(data)) is None
        assert [b async for b in store.list()] == []

    asyncio.run(go())


def test_a_claim_left_by_a_registry_killed_mid_publish_delays_the_next_push_less_than_a_client_waits(
    wired: tuple[Metadata, VerifiedStore],
) -> None:
    """A registry killed after claiming a blob's row to publish it leaves the claim behind. The next
    push of the same bytes (the client resuming after the restart) waits it out and is linked well
    within hangar's 30 s read timeout; with a 60 s hold the soak saw that push time out."""
    meta, store = wired
    data = os.urandom(100_000)

    async def go() -> None:
        dead = await run_in_threadpool(meta.claim_blob, digest(data), len(data), PUBLISH_HOLD)
        assert dead is not None  # the killed registry's claim, never linked nor released
        started = time.monotonic()
        info = await push(meta, store, "team/again", data)
        waited = time.monotonic() - started
        assert info.generation is not None and info.generation != dead
        assert PUBLISH_HOLD - 1 <= waited < CLAIM_WAIT < 30
        assert await read_all(store, digest(data)) == data
        assert await run_in_threadpool(meta.blob_size, "team/again", digest(data)) == len(data)

    asyncio.run(go())


def test_what_a_gc_killed_between_the_bytes_and_the_row_leaves_is_a_leftover(
    wired: tuple[Metadata, VerifiedStore],
) -> None:
    """gc took the row and deleted the bytes, then died before the row: once gc's hold has run
    out, fsck names that row a leftover (not a fault), ``--repair`` finishes gc's step, and a push
    of the same bytes afterwards stores them again."""
    meta, store = wired
    data = os.urandom(100_000)

    async def go() -> None:
        await orphan(meta, store, data)
        generation = await run_in_threadpool(meta.collect_blob, str(digest(data)), utcnow(), 0.0)
        assert generation is not None
        await store.delete(digest(data))  # and then the kill: the row stays
        report = await Fsck(meta, store).run()
        assert [(p.kind, p.subject) for p in report.problems] == [("unused-row", str(digest(data)))]
        assert report.clean
        repaired = await Fsck(meta, store, repair=True).run()
        assert [p.repaired for p in repaired.problems] == [True]
        assert (await Fsck(meta, store).run()).problems == []
        await push(meta, store, "team/new", data)
        assert await read_all(store, digest(data)) == data

    asyncio.run(go())


def test_a_publish_that_fails_lets_go_of_its_claim(
    wired: tuple[Metadata, VerifiedStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails to publish verified bytes: the claim made for them is released (the row it
    made for bytes that never came is gone), so the client's retry is not kept waiting for the
    hold, and fsck finds nothing left behind."""
    meta, store = wired
    data = os.urandom(100_000)

    async def failing(upload_id: str, d: Digest, size: int) -> None:
        raise OSError(28, "No space left on device")

    async def go() -> None:
        with monkeypatch.context() as patched:
            patched.setattr(store.backend, "publish_upload", failing)
            with pytest.raises(OSError, match="No space left"):
                await publish(store, data)
        assert meta.count("blob") == 0
        started = time.monotonic()
        await push(meta, store, "team/retry", data)
        assert time.monotonic() - started < PUBLISH_HOLD / 2  # no hold to wait out
        assert await read_all(store, digest(data)) == data
        assert (await Fsck(meta, store, full=True).run()).problems == []

    asyncio.run(go())


def test_a_failed_publish_of_bytes_the_store_has_keeps_their_row_and_ends_the_hold(
    wired: tuple[Metadata, VerifiedStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another repository's bytes are stored (unlinked, gc's to take) when a second upload of them
    fails to publish: their row stays (the bytes are there) and is free for gc again."""
    meta, store = wired
    data = os.urandom(100_000)

    async def failing(upload_id: str, d: Digest, size: int) -> None:
        raise OSError(5, "Input/output error")

    async def go() -> None:
        await orphan(meta, store, data)
        monkeypatch.setattr(store.backend, "publish_upload", failing)
        with pytest.raises(OSError):
            await publish(store, data)
        assert meta.count("blob") == 1
        done = await execute(meta, store, await plan_blobs(meta, grace=0))
        assert done.blobs == [str(digest(data))]  # not held: gc may take it at once

    asyncio.run(go())


def test_linking_stored_bytes_waits_for_gc_deleting_them_and_then_finds_them_gone(
    wired: tuple[Metadata, VerifiedStore],
) -> None:
    """The mirror links bytes it finds in the store (``link_stored``) while gc is deleting them:
    it waits for gc, then sees they are gone and links nothing (the mirror fetches them again),
    where a look at the store followed by a plain link would have named deleted bytes."""
    meta, store = wired
    data = os.urandom(100_000)

    async def go() -> None:
        await orphan(meta, store, data)
        plan = await plan_blobs(meta, grace=0)
        tasks: list[asyncio.Task[BlobInfo | None]] = []

        async def pause(d: str) -> None:
            tasks.append(asyncio.create_task(link_stored(meta, store, "mirror/new", digest(data))))
            await asyncio.sleep(0.5)  # it found the bytes and is waiting for gc's hold
            assert not tasks[0].done()

        done = await execute(meta, store, plan, pause)
        assert done.blobs == [str(digest(data))]
        assert await tasks[0] is None
        assert await run_in_threadpool(meta.blob_size, "mirror/new", digest(data)) is None
        assert meta.count("blob") == 0
        assert (await Fsck(meta, store, full=True).run()).problems == []

    asyncio.run(go())


def test_linked_stored_bytes_are_kept_from_gc(wired: tuple[Metadata, VerifiedStore]) -> None:
    """Bytes found in the store and linked by ``link_stored`` are the repository's: gc keeps them."""
    meta, store = wired
    data = os.urandom(100_000)

    async def go() -> None:
        await orphan(meta, store, data)
        plan = await plan_blobs(meta, grace=0)
        info = await link_stored(meta, store, "mirror/new", digest(data))
        assert info is not None and info.generation is not None
        assert (await execute(meta, store, plan)).blobs == []
        assert await run_in_threadpool(meta.blob_size, "mirror/new", digest(data)) == len(data)
        assert await link_stored(meta, store, "mirror/other", Digest("0" * 64)) is None
        assert (await Fsck(meta, store, full=True).run()).problems == []

    asyncio.run(go())


def test_two_uploads_of_one_digest_at_once_leave_one_data_object(
    postgres: PostgresCluster, swift: SwiftS3, s3_backend: S3Store
) -> None:
    """On S3 each session's bytes are their own object (``data/<id>``), the blob key names one:
    two sessions publishing the same digest at once take turns, the second finds the first's blob
    and drops its own bytes. Both verified before either asks to publish."""
    url = postgres.create_database()
    db.upgrade(url)
    meta = Metadata(db.make_engine(url, pooled=False))
    store = VerifiedStore(s3_backend)
    claim = claimer(meta)
    data = os.urandom(6 * 1024 * 1024 + 3)
    asked: list[Digest] = []
    both = asyncio.Event()

    async def claim_together(d: Digest, size: int) -> str:
        asked.append(d)
        if len(asked) == 2:
            both.set()
        await both.wait()
        return await claim(d, size)

    store.claim = claim_together

    async def go() -> None:
        first, second = await asyncio.gather(push(meta, store, "team/a", data), push(meta, store, "team/b", data))
        assert first.generation == second.generation
        assert len(keys(swift, s3_backend, "data/")) == 1
        assert keys(swift, s3_backend, "uploads/") == []
        assert not swift.client().list_multipart_uploads(Bucket=s3_backend.bucket).get("Uploads")
        assert await read_all(store, digest(data)) == data
        for repo in ("team/a", "team/b"):
            assert await run_in_threadpool(meta.blob_size, repo, digest(data)) == len(data)

    try:
        asyncio.run(go())
    finally:
        meta.engine.dispose()
