"""One suite for every blob-store backend (the filesystem store today)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from formats.digest import Digest
from registry.storage import (
    BlobNotFound,
    BlobStore,
    DigestMismatch,
    IncompleteChunk,
    OffsetMismatch,
    OversizedChunk,
    SizeMismatch,
    UploadNotFound,
    put_blob,
)
from registry.storage.filesystem import FilesystemStore


@pytest.fixture(params=["filesystem"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    return FilesystemStore(tmp_path)


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def failing(data: bytes) -> AsyncIterator[bytes]:
    yield data
    raise ConnectionError("client went away")


async def read_all(store: BlobStore, digest: Digest, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([c async for c in store.read(digest, offset, length)])


def digest(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_put_read_stat_delete(store: BlobStore) -> None:
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


def test_chunked_upload_resumes_from_reported_size(store: BlobStore) -> None:
    data = os.urandom(300_000)

    async def go() -> None:
        await store.start_upload("u2")
        assert await store.upload_size("u2") == 0
        assert await store.append_upload("u2", 0, chunks(data[:100_000]), 100_000) == 100_000
        # A new process (no cached hash) takes over: the commit re-hashes the file.
        other = FilesystemStore(store.root) if isinstance(store, FilesystemStore) else store
        size = await other.upload_size("u2")
        assert size == 100_000
        assert await other.append_upload("u2", size, chunks(data[size:]), None) == len(data)
        info = await other.commit_upload("u2", digest(data))
        assert info.size == len(data) and await read_all(store, digest(data)) == data
        with pytest.raises(UploadNotFound):
            await store.upload_size("u2")

    run(go())


def test_out_of_order_chunk_is_refused(store: BlobStore) -> None:
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


def test_declared_chunk_is_all_or_nothing(store: BlobStore) -> None:
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


def test_commit_verifies_and_discards_on_mismatch(store: BlobStore) -> None:
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


def test_concurrent_uploads_of_one_blob(store: BlobStore) -> None:
    data = os.urandom(2_000_000)

    async def one(i: int) -> None:
        await put_blob(store, f"c{i}", digest(data), chunks(data, 100_000), len(data))

    async def go() -> None:
        await asyncio.gather(*(one(i) for i in range(6)))
        assert await read_all(store, digest(data)) == data
        assert [u async for u in store.list_uploads()] == []

    run(go())


def test_abort_and_unknown_uploads(store: BlobStore) -> None:
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


def test_commit_reports_chunk_sums(store: BlobStore) -> None:
    from registry.storage import CHUNK_SIZE

    data = os.urandom(2 * CHUNK_SIZE + 5)

    async def go() -> None:
        await store.start_upload("cs")
        await store.append_upload("cs", 0, chunks(data[:1000]), 1000)
        fresh = FilesystemStore(store.root) if isinstance(store, FilesystemStore) else store
        await fresh.append_upload("cs", 1000, chunks(data[1000:], 3_000_000), None)  # no cached hash here
        info = await fresh.commit_upload("cs", digest(data))
        expected = tuple(hashlib.sha256(data[i : i + CHUNK_SIZE]).hexdigest() for i in range(0, len(data), CHUNK_SIZE))
        assert info.chunk_sums == expected
        info2 = await put_blob(store, "cs2", digest(data), chunks(data, 1_000_000), len(data))
        assert info2.chunk_sums == expected

    run(go())
