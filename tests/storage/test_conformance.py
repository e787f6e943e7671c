"""One suite for every blob-store backend, each under the verifying layer the registry uses
(filesystem, memory, and S3 on a real Swift: tests/swift.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from formats.digest import Digest
from registry.storage import (
    BlobNotFound,
    BlobStore,
    ContentHash,
    DigestMismatch,
    IncompleteChunk,
    OffsetMismatch,
    OversizedChunk,
    SizeMismatch,
    UploadNotFound,
    VerifiedStore,
    put_blob,
)
from registry.storage.filesystem import FilesystemStore
from registry.storage.memory import MemoryStore

T = TypeVar("T")
BACKENDS = ["filesystem", "memory", "s3"]


def make_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    if kind == "filesystem":
        return FilesystemStore(tmp_path / "blobs", uploads_dir=tmp_path / "uploads")
    if kind == "memory":
        return MemoryStore()
    if kind == "s3":
        backend: BlobStore = request.getfixturevalue("s3_backend")
        return backend
    raise AssertionError(kind)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> VerifiedStore:
    return VerifiedStore(make_backend(request.param, tmp_path, request))


def reopen(store: VerifiedStore) -> VerifiedStore:
    """The same backing storage as another process (another worker or replica) sees it: nothing
    shared in memory but what the backend keeps."""
    backend = store.backend
    if isinstance(backend, FilesystemStore):
        return VerifiedStore(FilesystemStore(backend.root, uploads_dir=backend.uploads_dir))
    if isinstance(backend, MemoryStore):
        return VerifiedStore(backend)
    return VerifiedStore(type(backend).from_url(backend.url))  # type: ignore[attr-defined]


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def failing(data: bytes) -> AsyncIterator[bytes]:
    yield data
    raise ConnectionError("client went away")


async def read_all(store: VerifiedStore, digest: Digest, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([c async for c in store.read(digest, offset, length)])


def digest(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_ready(store: VerifiedStore) -> None:
    run(store.ready())  # /readyz's probe (failures: tests/registry/test_health.py, tests/storage/test_s3.py)


def test_put_read_stat_delete(store: VerifiedStore) -> None:
    data = os.urandom(5 * 1024 * 1024 + 7)  # spans several read and write batches

    async def go() -> None:
        d = digest(data)
        info = await put_blob(store, "u1", d, chunks(data), len(data))
        assert info.size == len(data)
        assert (await store.stat(d)).size == len(data)
        assert await read_all(store, d) == data
        assert await read_all(store, d, 1_000_000, 2_000_000) == data[1_000_000:3_000_000]
        assert [b.digest async for b in store.list()] == [d]
        await store.delete(d)
        with pytest.raises(BlobNotFound):
            await store.stat(d)
        await store.delete(d)  # idempotent

    run(go())


def test_chunked_upload_resumes_from_reported_size(store: VerifiedStore) -> None:
    data = os.urandom(300_000)

    async def go() -> None:
        await store.start_upload("u2")
        assert await store.upload_size("u2") == 0
        assert await store.append_upload("u2", 0, chunks(data[:100_000]), 100_000) == 100_000
        # A new process takes over, from the running hash the backend keeps.
        other = reopen(store)
        size = await other.upload_size("u2")
        assert size == 100_000
        assert await other.append_upload("u2", size, chunks(data[size:]), None) == len(data)
        info = await other.commit_upload("u2", digest(data))
        assert info.size == len(data) and await read_all(store, digest(data)) == data
        with pytest.raises(UploadNotFound):
            await store.upload_size("u2")

    run(go())


def test_out_of_order_chunk_is_refused(store: VerifiedStore) -> None:
    async def go() -> None:
        await store.start_upload("u3")
        await store.append_upload("u3", 0, chunks(b"abc"), 3)
        with pytest.raises(OffsetMismatch) as e:
            await store.append_upload("u3", 5, chunks(b"xyz"), 3)
        assert e.value.expected == 3
        with pytest.raises(OffsetMismatch):
            await store.append_upload("u3", 0, chunks(b"abc"), 3)
        assert await store.upload_size("u3") == 3

    run(go())


def test_declared_chunk_is_all_or_nothing(store: VerifiedStore) -> None:
    data = os.urandom(6 * 1024 * 1024)

    async def go() -> None:
        await store.start_upload("u4")
        await store.append_upload("u4", 0, chunks(data[:1000]), 1000)
        with pytest.raises(ConnectionError):
            await store.append_upload("u4", 1000, failing(data[1000:5_000_000]), len(data) - 1000)
        assert await store.upload_size("u4") == 1000
        with pytest.raises(IncompleteChunk):
            await store.append_upload("u4", 1000, chunks(data[1000:2000]), 5000)
        with pytest.raises(OversizedChunk):
            await store.append_upload("u4", 1000, chunks(data[1000:9000]), 10)
        assert await store.upload_size("u4") == 1000
        # The same chunk again, whole this time.
        await store.append_upload("u4", 1000, chunks(data[1000:]), len(data) - 1000)
        assert (await store.commit_upload("u4", digest(data))).size == len(data)
        assert await read_all(store, digest(data)) == data

    run(go())


def test_commit_verifies_and_discards_on_mismatch(store: VerifiedStore) -> None:
    async def go() -> None:
        await store.start_upload("u5")
        await store.append_upload("u5", 0, chunks(b"hello"), 5)
        wrong = digest(b"other")
        with pytest.raises(DigestMismatch) as e:
            await store.commit_upload("u5", wrong)
        assert e.value.actual == digest(b"hello")
        with pytest.raises(BlobNotFound):
            await store.stat(wrong)
        with pytest.raises(UploadNotFound):
            await store.upload_size("u5")
        await store.start_upload("u6")
        await store.append_upload("u6", 0, chunks(b"hello"), 5)
        with pytest.raises(SizeMismatch):
            await store.commit_upload("u6", digest(b"hello"), 6)
        with pytest.raises(BlobNotFound):
            await store.stat(digest(b"hello"))

    run(go())


def test_concurrent_uploads_of_one_blob(store: VerifiedStore) -> None:
    data = os.urandom(2_000_000)

    async def one(i: int) -> None:
        await put_blob(store, f"c{i}", digest(data), chunks(data, 100_000), len(data))

    async def go() -> None:
        await asyncio.gather(*(one(i) for i in range(6)))
        assert await read_all(store, digest(data)) == data
        assert [u async for u in store.list_uploads()] == []

    run(go())


def test_abort_and_unknown_uploads(store: VerifiedStore) -> None:
    async def go() -> None:
        await store.start_upload("u7")
        await store.abort_upload("u7")
        await store.abort_upload("u7")
        for bad in ("u7", "../escape", "x/y"):
            with pytest.raises(UploadNotFound):
                await store.upload_size(bad)
            with pytest.raises(UploadNotFound):
                await store.append_upload(bad, 0, chunks(b"x"), 1)
        with pytest.raises(BlobNotFound):
            await read_all(store, digest(b"nothing"))

    run(go())


def test_commit_reports_chunk_sums(store: VerifiedStore) -> None:
    from registry.storage import CHUNK_SIZE

    data = os.urandom(2 * CHUNK_SIZE + 5)

    async def go() -> None:
        await store.start_upload("cs")
        await store.append_upload("cs", 0, chunks(data[:1000]), 1000)
        fresh = reopen(store)
        await fresh.append_upload("cs", 1000, chunks(data[1000:], 3_000_000), None)
        info = await fresh.commit_upload("cs", digest(data))
        expected = tuple(hashlib.sha256(data[i : i + CHUNK_SIZE]).hexdigest() for i in range(0, len(data), CHUNK_SIZE))
        assert info.chunk_sums == expected
        info2 = await put_blob(store, "cs2", digest(data), chunks(data, 1_000_000), len(data))
        assert info2.chunk_sums == expected

    run(go())


def test_another_process_continues_without_rereading(store: VerifiedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The running hash travels with the session: a worker that did not see the first chunks
    continues and commits without reading back what the store holds."""
    from registry.storage import CHUNK_SIZE

    data = os.urandom(CHUNK_SIZE + 3_000_000)

    async def go() -> None:
        await store.start_upload("hs")
        await store.append_upload("hs", 0, chunks(data[:7_000_000], 1_000_000), 7_000_000)
        other = reopen(store)

        def no_reread(upload_id: str) -> AsyncIterator[bytes]:
            raise AssertionError("the upload was read back")

        monkeypatch.setattr(other.backend, "read_upload", no_reread)
        await other.append_upload("hs", 7_000_000, chunks(data[7_000_000:12_000_000]), 5_000_000)
        third = reopen(store)
        monkeypatch.setattr(third.backend, "read_upload", no_reread)
        await third.append_upload("hs", 12_000_000, chunks(data[12_000_000:]), None)
        info = await third.commit_upload("hs", digest(data))
        assert info.chunk_sums == (
            hashlib.sha256(data[:CHUNK_SIZE]).hexdigest(),
            hashlib.sha256(data[CHUNK_SIZE:]).hexdigest(),
        )
        assert await read_all(store, digest(data)) == data

    run(go())


@pytest.mark.parametrize("record", [None, b"not a state", b"{}"])
def test_a_lost_or_damaged_hash_state_is_rebuilt_from_the_bytes(
    store: VerifiedStore, monkeypatch: pytest.MonkeyPatch, record: bytes | None
) -> None:
    data = os.urandom(1_000_000)

    async def go() -> None:
        await store.start_upload("ls")
        await store.append_upload("ls", 0, chunks(data[:400_000]), 400_000)
        with monkeypatch.context() as m:
            m.setattr(ContentHash, "state", lambda self: record)
            await store.append_upload("ls", 400_000, chunks(data[400_000:700_000]), 300_000)
        assert await store.backend.load_state("ls") == record
        # The next chunk cannot continue a hash it does not have; the commit reads the bytes back.
        await store.append_upload("ls", 700_000, chunks(data[700_000:]), None)
        with pytest.raises(DigestMismatch):
            await reopen(store).commit_upload("ls", digest(b"other"))
        await store.start_upload("ls2")
        with monkeypatch.context() as m:
            m.setattr(ContentHash, "state", lambda self: record)
            await store.append_upload("ls2", 0, chunks(data), len(data))
        assert (await reopen(store).commit_upload("ls2", digest(data))).size == len(data)
        assert await read_all(store, digest(data)) == data

    run(go())


def test_content_hash_state_round_trips() -> None:
    data = os.urandom(3_000_000)
    h = ContentHash(chunk_size=1_000_003)
    h.update(data[:1_234_567])
    again = ContentHash.restore(h.state())
    assert again is not None and again.size == 1_234_567
    again.update(data[1_234_567:])
    assert again.digest() == digest(data)
    assert again.chunk_sums() == tuple(
        hashlib.sha256(data[i : i + 1_000_003]).hexdigest() for i in range(0, len(data), 1_000_003)
    )
