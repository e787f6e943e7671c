"""The S3 backend against a real Swift (tests/swift.py): what the conformance suite cannot see."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator

import httpx
import pytest
from botocore.exceptions import ClientError

from formats.digest import Digest
from registry.storage import (
    DigestMismatch,
    EtagMismatch,
    StorageUnavailable,
    UploadNotFound,
    VerifiedStore,
    open_store,
    put_blob,
)
from registry.storage.s3 import MIN_PART, S3Store
from tests.swift import SwiftS3


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def digest(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def test_a_wrong_secret_fails(swift: SwiftS3, s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Swift checks signatures: the same request signed with another secret is refused."""
    bucket = s3_url.removeprefix("s3://").split("/")[0]
    swift.client().put_object(Bucket=bucket, Key="probe", Body=b"x")
    with pytest.raises(ClientError) as e:
        swift.client(secret="not-the-secret").get_object(Bucket=bucket, Key="probe")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_store(s3_url)
    with pytest.raises(StorageUnavailable):
        asyncio.run(store.stat(digest(b"x")))
    with pytest.raises(StorageUnavailable):
        asyncio.run(store.start_upload("u"))


def test_small_chunks_are_buffered_into_parts_of_at_least_5_mib(swift: SwiftS3, s3_backend: S3Store) -> None:
    data = os.urandom(12 * 1024 * 1024 + 5)
    store = VerifiedStore(s3_backend)

    async def go() -> None:
        await store.start_upload("small")
        offset = 0
        for i in range(0, len(data), 1024 * 1024):  # 1 MiB PATCHes, as a cautious client sends
            piece = data[i : i + 1024 * 1024]
            offset = await store.append_upload("small", offset, chunks(piece), len(piece))
        record = await s3_backend._record("small")
        sizes = [p[2] for p in record["parts"]]
        assert sizes and all(s >= MIN_PART for s in sizes)
        assert sum(sizes) + record["tail_size"] == len(data) and record["tail_size"] < MIN_PART
        info = await store.commit_upload("small", digest(data))
        assert info.size == len(data)
        assert (await store.stat(digest(data))).size == len(data)
        assert b"".join([c async for c in store.read(digest(data))]) == data
        # Nothing of the session is left but its bytes: no record, no tail, no multipart upload.
        left = swift.client().list_objects_v2(Bucket=s3_backend.bucket, Prefix=f"{s3_backend.prefix}uploads/")
        assert left.get("KeyCount", 0) == 0
        assert not swift.client().list_multipart_uploads(Bucket=s3_backend.bucket).get("Uploads")

    asyncio.run(go())


def test_presigned_url_serves_ranges_without_credentials(s3_backend: S3Store) -> None:
    data = os.urandom(3_000_000)
    store = VerifiedStore(s3_backend)

    async def go() -> str:
        await put_blob(store, "p", digest(data), chunks(data), len(data))
        url = await store.redirect_url(digest(data), 60)
        assert url is not None
        return url

    url = asyncio.run(go())
    assert "Signature=" in url or "X-Amz-Signature=" in url
    r = httpx.get(url, headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert httpx.get(url).content == data
    tampered = url.replace("registry/data/", "registry/datb/")
    assert tampered != url
    assert httpx.get(tampered).status_code == 403


def test_abandoned_multipart_uploads_are_found_and_aborted(swift: SwiftS3, s3_backend: S3Store) -> None:
    """The purge lists sessions (their records) and multipart uploads whose record never got
    written (a crash between the two calls); aborting either leaves nothing behind."""
    store = VerifiedStore(s3_backend)
    client = swift.client()
    orphan_key = f"{s3_backend.prefix}uploads/orphan-1/data"
    client.create_multipart_upload(Bucket=s3_backend.bucket, Key=orphan_key)

    async def go() -> None:
        await store.start_upload("abandoned")
        await store.append_upload("abandoned", 0, chunks(os.urandom(6 * 1024 * 1024)), None)
        listed = {u.upload_id: u for u in [u async for u in store.list_uploads()]}
        assert set(listed) == {"abandoned", "orphan-1"}
        assert listed["abandoned"].size == 6 * 1024 * 1024
        for upload_id in listed:
            await store.abort_upload(upload_id)
        assert [u async for u in store.list_uploads()] == []

    asyncio.run(go())
    assert not client.list_multipart_uploads(Bucket=s3_backend.bucket).get("Uploads")
    assert client.list_objects_v2(Bucket=s3_backend.bucket).get("KeyCount", 0) == 0


def test_a_session_record_names_parts_and_hash(s3_backend: S3Store) -> None:
    """One record per session, rewritten with each chunk: the running hash rides along."""
    store = VerifiedStore(s3_backend)

    async def go() -> None:
        await store.start_upload("rec")
        await store.append_upload("rec", 0, chunks(b"abc"), 3)
        record = await s3_backend._record("rec")
        assert record["tail_size"] == 3 and record["parts"] == []
        assert json.loads(record["hash"])["size"] == 3

    asyncio.run(go())


def test_ready_is_a_head_bucket(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``/readyz``'s probe: the bucket answers; a missing bucket or a wrong secret does not."""
    asyncio.run(open_store(s3_url).ready())
    with pytest.raises(StorageUnavailable):
        asyncio.run(open_store("s3://no-such-bucket-hangar/x?addressing_style=path").ready())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageUnavailable):
        asyncio.run(open_store(s3_url).ready())


class Calls:
    """The S3 operations a client makes (botocore's own event hooks, on the real requests)."""

    def __init__(self, backend: S3Store) -> None:
        self.seen: list[tuple[str, str]] = []  # (operation, key)
        backend.client.meta.events.register("before-call.s3", self._record)

    def _record(self, model: object, params: dict[str, object], **kwargs: object) -> None:
        self.seen.append((str(getattr(model, "name", "")), str(params.get("url_path", ""))))

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]


def keys(swift: SwiftS3, backend: S3Store, under: str) -> list[str]:
    listed = swift.client().list_objects_v2(Bucket=backend.bucket, Prefix=f"{backend.prefix}{under}")
    return [item["Key"] for item in listed.get("Contents", [])]


def test_the_commit_completes_in_place_and_copies_nothing(swift: SwiftS3, s3_backend: S3Store) -> None:
    """The multipart upload is completed where it is and the blob key names it: no server-side
    copy, no read-back (the running hash verified the bytes), a few small requests whatever the size."""
    data = os.urandom(40 * 1024 * 1024 + 3)
    store = VerifiedStore(s3_backend)

    async def go() -> None:
        await store.start_upload("inplace")
        await store.append_upload("inplace", 0, chunks(data, 1024 * 1024), len(data))
        calls = Calls(s3_backend)
        info = await store.commit_upload("inplace", digest(data), len(data))
        assert info.size == len(data)
        names = calls.names()
        assert "CopyObject" not in names and "UploadPartCopy" not in names
        assert not [key for name, key in calls.seen if name == "GetObject" and "/data/" in key]  # no read-back
        assert len(names) <= 12, names
        # The blob key is an empty object naming the bytes; they are where the upload put them.
        client = swift.client()
        head = client.head_object(Bucket=s3_backend.bucket, Key=s3_backend.blob_key(digest(data)))
        assert head["ContentLength"] == 0
        assert head["Metadata"] == {"hangar-data": "data/inplace", "hangar-size": str(len(data))}
        assert keys(swift, s3_backend, "data/") == [f"{s3_backend.prefix}data/inplace"]
        assert (await store.stat(digest(data))).size == len(data)
        part = b"".join([c async for c in store.read(digest(data), 20_000_000, 1000)])
        assert part == data[20_000_000:20_001_000]
        assert [(b.digest, b.size) async for b in store.list()] == [(digest(data), len(data))]
        # Aborting the finished session again (a purge of a row the commit could not delete)
        # leaves the blob's bytes alone.
        await store.abort_upload("inplace")
        assert len(b"".join([c async for c in store.read(digest(data))])) == len(data)

    asyncio.run(go())


def test_bytes_that_fail_verification_are_never_named_and_are_deleted(swift: SwiftS3, s3_backend: S3Store) -> None:
    data = os.urandom(7 * 1024 * 1024)
    store = VerifiedStore(s3_backend)

    async def go() -> None:
        await store.start_upload("wrong")
        await store.append_upload("wrong", 0, chunks(data), len(data))
        with pytest.raises(DigestMismatch):
            await store.commit_upload("wrong", digest(b"something else"))
        with pytest.raises(UploadNotFound):
            await store.upload_size("wrong")

    asyncio.run(go())
    assert keys(swift, s3_backend, "") == []
    assert not swift.client().list_multipart_uploads(Bucket=s3_backend.bucket).get("Uploads")


def _redirected(store: VerifiedStore, upload_id: str, data: bytes, part: int, sent: bytes | None = None) -> list[str]:
    """Send ``data`` in parts of ``part`` bytes to presigned part URLs, as a client does after a
    307 (``sent``: other bytes of the same length, as a lying client would); the parts' ETags."""

    async def urls() -> list[str]:
        await store.start_upload(upload_id)
        found = []
        for offset in range(0, len(data), part):
            url = await store.part_url(upload_id, offset, min(part, len(data) - offset), 60)
            assert url is not None
            found.append(url)
        return found

    body = sent if sent is not None else data
    etags = []
    for i, url in enumerate(asyncio.run(urls())):
        r = httpx.put(url, content=body[i * part : (i + 1) * part])
        assert r.status_code == 200
        etags.append(r.headers["etag"].strip('"'))
    return etags


def multipart_etag(etags: list[str]) -> str:
    return f"{hashlib.md5(b''.join(bytes.fromhex(e) for e in etags)).hexdigest()}-{len(etags)}"


def test_redirected_parts_are_read_back_once_and_checked(swift: SwiftS3, s3_backend: S3Store) -> None:
    """Parts PUT straight to the store bypass the registry: the commit completes the upload in
    place, reads it back once (streamed) to hash it, checks the client's etag, and names it."""
    part = 6 * 1024 * 1024
    data = os.urandom(2 * part + 1000)
    store = VerifiedStore(s3_backend)
    etags = _redirected(store, "redir", data, part)

    async def go() -> None:
        calls = Calls(s3_backend)
        info = await store.commit_upload("redir", digest(data), etag=f'"{multipart_etag(etags)}"')
        assert info.size == len(data) and info.chunk_sums == (digest(data).hex,)  # one 16 MiB chunk
        reads = [key for name, key in calls.seen if name == "GetObject" and "/data/" in key]
        assert len(reads) == 1  # one streamed read-back
        assert "CopyObject" not in calls.names()
        assert b"".join([c async for c in store.read(digest(data))]) == data

    asyncio.run(go())
    assert keys(swift, s3_backend, "uploads/") == []


def test_redirected_parts_that_are_not_what_the_client_said_are_deleted(swift: SwiftS3, s3_backend: S3Store) -> None:
    part = 5 * 1024 * 1024
    data = os.urandom(part + 10)
    store = VerifiedStore(s3_backend)

    # Other bytes than the digest says: the read-back finds out, and they go.
    _redirected(store, "liar", data, part, sent=os.urandom(len(data)))
    with pytest.raises(DigestMismatch):
        asyncio.run(store.commit_upload("liar", digest(data)))
    assert keys(swift, s3_backend, "") == []

    # The right bytes but another etag than the store's: refused, and they go too.
    etags = _redirected(store, "etag", data, part)
    with pytest.raises(EtagMismatch):
        asyncio.run(store.commit_upload("etag", digest(data), etag=multipart_etag(list(reversed(etags)))))
    assert keys(swift, s3_backend, "") == []
    assert not swift.client().list_multipart_uploads(Bucket=s3_backend.bucket).get("Uploads")


def test_blobs_an_earlier_version_copied_to_their_key_still_serve(swift: SwiftS3, s3_backend: S3Store) -> None:
    """Before the blob key became a pointer, the commit copied the bytes there: such blobs are
    read, listed, redirected to and deleted as before, and a new upload of one keeps it."""
    data = os.urandom(6 * 1024 * 1024)
    d = digest(data)
    swift.client().put_object(Bucket=s3_backend.bucket, Key=s3_backend.blob_key(d), Body=data)
    store = VerifiedStore(s3_backend)

    async def go() -> None:
        assert (await store.stat(d)).size == len(data)
        assert b"".join([c async for c in store.read(d, 5, 10)]) == data[5:15]
        url = await store.redirect_url(d, 60)
        assert url is not None and httpx.get(url).content == data
        await put_blob(store, "again", d, chunks(data), len(data))
        assert keys(swift, s3_backend, "data/") == []  # the new upload's bytes were dropped
        assert [(b.digest, b.size) async for b in store.list()] == [(d, len(data))]
        await store.delete(d)
        assert keys(swift, s3_backend, "") == []

    asyncio.run(go())
