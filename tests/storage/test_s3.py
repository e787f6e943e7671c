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
from registry.storage import StorageUnavailable, VerifiedStore, open_store, put_blob
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
        head = swift.client().head_object(Bucket=s3_backend.bucket, Key=s3_backend.blob_key(digest(data)))
        assert head["ContentLength"] == len(data)
        # Nothing of the session is left: no record, no tail, no multipart upload.
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
    tampered = url.replace("registry/blobs", "registry/blobz")
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
