"""The S3 backend: blobs in an S3-compatible bucket (AWS S3, R2, MinIO, Ceph, Swift's s3api).

Keys under ``s3://BUCKET[/PREFIX]``::

    PREFIX/blobs/sha256/<first 2 hex>/<64 hex>   the blob: an empty object whose metadata names its
                                                 bytes (``hangar-data``, ``hangar-size``), or, as
                                                 earlier versions wrote them, the bytes themselves
    PREFIX/data/<upload id>                      the bytes of one upload: its S3 multipart upload,
                                                 completed in place; a blob's bytes once a blob key
                                                 names them, immutable
    PREFIX/uploads/<upload id>/record            JSON: the multipart upload id, its parts (number, ETag,
                                                 size), the tail object, the running hash, times
    PREFIX/uploads/<upload id>/tail-<n>          bytes past the last part, fewer than S3's 5 MiB minimum

Each upload session is one multipart upload. A chunk's bytes become parts of ``PART_SIZE`` as they
arrive (uploaded while the next ones arrive); what is left at the end of a chunk becomes a part if
it reaches S3's 5 MiB minimum, else the tail object, which the next chunk reads back and sends on
first. The record is rewritten once per chunk, in one PUT, with the running hash of the layer
above (``registry.storage.verify``), so it always describes bytes that are there: a chunk that
fails leaves the old record, its parts are overwritten by the retry (same part numbers) and the
parts a record does not list never join the blob.

The commit costs a few small requests whatever the blob's size: S3 names a multipart upload's key
when it starts, before anyone knows the digest, so the upload is completed where it is
(``data/<id>``) and the blob key becomes a pointer to it. Copying the bytes to a content-addressed
key instead (as distribution does) costs a second write of the whole blob: it halved push
throughput on Swift. The layer above verified the sha256 before the commit, from the running hash,
and the blob key is written only after that, so unverified bytes are never named by a digest; the
metadata database decides what is visible anyway (``registry.meta``). When the blob key already
exists (the same digest, so the same bytes), it stays and the session's bytes are dropped; the
registry has two sessions of one digest publish in turn (``registry.gc.claimer``), so the second
always finds the first's key and no bytes are left that nothing names.

A client that sends ``X-Redirect-Uploads: 1`` (Ollama's, and Hangar's own) with a first chunk of at
least 5 MiB gets each chunk's part as a presigned UploadPart URL instead (``part_url``): part
``offset / first chunk's length + 1``, the session marked so in its record and nothing else written
per chunk, since up to 16 such chunks are in flight at once. The parts are then listed from S3
(ListParts); S3 cannot read the parts of an unfinished multipart upload, so the commit completes it
at ``data/<id>`` (still named by no blob key), reads it back once, streamed, to hash it, and checks
the client's ``etag`` (the S3 multipart ETag) against the store's; a mismatch deletes it.

Blob GETs are presigned URLs of the bytes' key (``redirect_url``), which serve ``Range`` without
credentials; finding that key is one HEAD of the blob key.

The endpoint, region and credentials come from boto3's usual sources (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_PROFILE``, ``~/.aws/config``
and ``credentials``); ``?addressing_style=path`` (or ``s3.addressing_style`` in the AWS config)
asks for path-style URLs, which Swift and MinIO need. boto3 is synchronous: every call runs in a
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from formats.digest import Digest
from registry.storage.base import (
    BlobInfo,
    BlobNotFound,
    IncompleteChunk,
    OffsetMismatch,
    OversizedChunk,
    SizeMismatch,
    StateAfter,
    StorageError,
    StorageUnavailable,
    UploadInfo,
    UploadModeConflict,
    UploadNotFound,
)

MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last
PART_SIZE = 16 * 1024 * 1024  # 10,000 parts (S3's most) of this: blobs up to 156 GiB
READ_CHUNK = 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}

T = TypeVar("T")
# ``[number, etag, size]`` of each part (named here: inside S3Store, ``list`` is a method).
Parts = list[list[Any]]


# boto3 blocks: its calls run in threads of their own, as many as its connection pool, so that a
# few slow transfers do not hold up everything else in asyncio's small default pool.
_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="s3")


def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
    return asyncio.get_running_loop().run_in_executor(_POOL, lambda: fn(*args, **kwargs))


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _check_upload_id(upload_id: str) -> None:
    if not upload_id or not all(c.isalnum() or c == "-" for c in upload_id) or len(upload_id) > 64:
        raise UploadNotFound(upload_id)


@dataclass(frozen=True, slots=True)
class _Blob:
    key: str  # the object holding the bytes
    size: int


class S3Store:
    part_urls = True
    exclusive_appends = False  # S3 has no locks (and Swift no conditional writes)

    def __init__(self, bucket: str, prefix: str = "", *, addressing_style: str | None = None, url: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = url or f"s3://{bucket}/{prefix}"
        s3: dict[str, Any] = {"addressing_style": addressing_style} if addressing_style else {}
        # SigV4 for presigned URLs too: a V2 one signs the Content-Type, which Ollama's part PUT sets.
        config = Config(
            s3=s3 or None,
            signature_version="s3v4",
            max_pool_connections=32,
            retries={"mode": "standard", "max_attempts": 4},
        )
        # Endpoint, region and credentials: boto3's own resolution (environment, config files).
        self.client = boto3.session.Session().client("s3", config=config)

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        """``s3://BUCKET[/PREFIX][?addressing_style=path|virtual]``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://BUCKET[/PREFIX] URL: {url!r}")
        style = parse_qs(parts.query).get("addressing_style", [None])[0]
        if style not in (None, "path", "virtual", "auto"):
            raise ValueError(f"addressing_style must be path, virtual or auto, got {style!r}")
        return cls(parts.netloc, parts.path, addressing_style=style, url=url)

    # -- keys ----------------------------------------------------------------------------

    def blob_key(self, digest: Digest) -> str:
        return f"{self.prefix}blobs/sha256/{digest.hex[:2]}/{digest.hex}"

    def _upload_key(self, upload_id: str, name: str) -> str:
        _check_upload_id(upload_id)
        return f"{self.prefix}uploads/{upload_id}/{name}"

    def _data_key(self, upload_id: str, record: dict[str, Any] | None = None) -> str:
        """Where a session's multipart upload lives: ``data/<id>``, or for a session an earlier
        version started (its record names no ``data``), ``uploads/<id>/data``."""
        _check_upload_id(upload_id)
        if record is not None and not record.get("data"):
            return self._upload_key(upload_id, "data")
        return f"{self.prefix}data/{upload_id}"

    async def _call(self, method: str, **kwargs: Any) -> Any:
        """One S3 call in a thread; errors other than "not found" become StorageUnavailable."""
        try:
            return await _in_thread(getattr(self.client, method), Bucket=self.bucket, **kwargs)
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise
            raise StorageUnavailable(f"S3 {method}: {e}") from e
        except BotoCoreError as e:
            raise StorageUnavailable(f"S3 {method}: {e}") from e

    async def ready(self) -> None:
        try:
            await self._call("head_bucket")
        except ClientError as e:  # "not found": the bucket is gone
            raise StorageUnavailable(f"S3 head_bucket: {e}") from e

    # -- blobs ---------------------------------------------------------------------------

    async def _blob(self, digest: Digest) -> _Blob:
        """Where a blob's bytes are, and its size; raises BlobNotFound."""
        try:
            head = await self._call("head_object", Key=self.blob_key(digest))
        except ClientError:
            raise BlobNotFound(str(digest)) from None
        meta = head.get("Metadata") or {}
        if "hangar-data" in meta:
            return _Blob(self.prefix + meta["hangar-data"], int(meta["hangar-size"]))
        return _Blob(self.blob_key(digest), int(head["ContentLength"]))

    async def stat(self, digest: Digest) -> BlobInfo:
        return BlobInfo(digest, (await self._blob(digest)).size)

    async def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        blob = await self._blob(digest)
        if length == 0 or offset >= blob.size:
            return
        kwargs: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            response = await self._call("get_object", Key=blob.key, **kwargs)
        except ClientError:
            raise BlobNotFound(str(digest)) from None
        body = response["Body"]
        try:
            while data := await _in_thread(body.read, READ_CHUNK):
                yield data
        finally:
            body.close()

    async def delete(self, digest: Digest) -> None:
        try:
            blob = await self._blob(digest)
        except BlobNotFound:
            return
        # The key first: a delete cut short leaves bytes that nothing names, never a key naming
        # bytes that are gone.
        with contextlib.suppress(ClientError):
            await self._call("delete_object", Key=self.blob_key(digest))
        if blob.key != self.blob_key(digest):
            with contextlib.suppress(ClientError):
                await self._call("delete_object", Key=blob.key)

    async def list(self) -> AsyncIterator[BlobInfo]:
        async for item in self._list(f"{self.prefix}blobs/sha256/"):
            name = item["Key"].rsplit("/", 1)[-1]
            try:
                digest = Digest.parse(f"sha256:{name}")
            except ValueError:
                continue
            size = int(item["Size"])
            if size == 0:  # a pointer (or the empty blob): its size is in its metadata
                try:
                    size = (await self._blob(digest)).size
                except BlobNotFound:
                    continue
            yield BlobInfo(digest, size)

    async def redirect_url(self, digest: Digest, expires_in: int) -> str | None:
        blob = await self._blob(digest)
        params = {"Bucket": self.bucket, "Key": blob.key}
        url: str = await _in_thread(
            self.client.generate_presigned_url, "get_object", Params=params, ExpiresIn=expires_in
        )
        return url

    async def _list(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                yield item
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    # -- the session record ----------------------------------------------------------------

    async def _record(self, upload_id: str) -> dict[str, Any]:
        try:
            response = await self._call("get_object", Key=self._upload_key(upload_id, "record"))
        except ClientError:
            raise UploadNotFound(upload_id) from None
        record: dict[str, Any] = json.loads(await _in_thread(response["Body"].read))
        return record

    async def _save_record(self, upload_id: str, record: dict[str, Any]) -> None:
        record["modified"] = time.time()
        body = json.dumps(record, separators=(",", ":")).encode()
        await self._call("put_object", Key=self._upload_key(upload_id, "record"), Body=body)

    @staticmethod
    def _size(record: dict[str, Any]) -> int:
        return sum(int(p[2]) for p in record["parts"]) + int(record["tail_size"])

    # -- uploads -------------------------------------------------------------------------

    async def start_upload(self, upload_id: str, state: bytes | None) -> None:
        data_key = self._data_key(upload_id)
        mpu = await self._call("create_multipart_upload", Key=data_key)
        record: dict[str, Any] = {"mpu": mpu["UploadId"], "data": data_key[len(self.prefix) :], "parts": []}
        record.update(tail=None, tail_size=0, tail_md5=None)
        record["hash"] = state.decode() if state is not None else None
        record["started"] = time.time()
        await self._save_record(upload_id, record)

    async def upload_size(self, upload_id: str) -> int:
        record = await self._record(upload_id)
        return sum(int(p[2]) for p in await self._parts(upload_id, record)) + int(record["tail_size"])

    async def _parts(self, upload_id: str, record: dict[str, Any]) -> Parts:
        """The session's parts ``[number, etag, size]`` in order: the record's, or for parts sent
        straight to the store, those S3 lists that make one run from the start (each but the last
        of the first part's size)."""
        if not record.get("redirected") or record.get("sealed"):
            return [list(p) for p in record["parts"]]
        listed: Parts = []
        marker = 0
        while True:
            page = await self._call(
                "list_parts", Key=self._data_key(upload_id, record), UploadId=record["mpu"], PartNumberMarker=marker
            )
            listed += [[p["PartNumber"], p["ETag"], int(p["Size"])] for p in page.get("Parts", [])]
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        parts: Parts = []
        for part in sorted(listed):
            if part[0] != len(parts) + 1 or (parts and parts[-1][2] != record["part_size"]):
                break
            parts.append(part)
        return parts

    async def part_url(self, upload_id: str, offset: int, length: int, expires_in: int) -> str | None:
        record = await self._record(upload_id)
        if record.get("sealed"):
            return None
        if not record.get("redirected"):
            # Only a session that starts this way: its first chunk fixes the part size, and must
            # be a part S3 takes (a smaller one could only be the last).
            if offset != 0 or length < MIN_PART or record["parts"] or record["tail"]:
                return None
            record.update(redirected=True, part_size=length, hash=None)
            await self._save_record(upload_id, record)
        part_size = int(record["part_size"])
        number = offset // part_size + 1
        if offset % part_size or length > part_size or number > 10000:
            raise UploadModeConflict(f"a chunk at {offset} of {length} bytes does not fit parts of {part_size}")
        params = {
            "Bucket": self.bucket,
            "Key": self._data_key(upload_id, record),
            "UploadId": record["mpu"],
            "PartNumber": number,
        }
        url: str = await _in_thread(
            self.client.generate_presigned_url, "upload_part", Params=params, ExpiresIn=expires_in
        )
        return url

    async def upload_etag(self, upload_id: str) -> str | None:
        record = await self._record(upload_id)
        etag = record.get("etag") if record.get("redirected") else None
        return str(etag) if etag else None

    async def load_state(self, upload_id: str) -> bytes | None:
        value = (await self._record(upload_id)).get("hash")
        return value.encode() if isinstance(value, str) else None

    async def append_upload(
        self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], length: int | None, state_after: StateAfter
    ) -> int:
        record = await self._record(upload_id)
        if record.get("sealed"):
            raise UploadNotFound(upload_id)  # being committed
        if record.get("redirected"):
            raise UploadModeConflict("this upload's chunks go to the object store (X-Redirect-Uploads: 1)")
        size = self._size(record)
        if offset != size:
            raise OffsetMismatch(size, offset)
        writer = _PartWriter(self, upload_id, record)
        await writer.load_tail()
        received = 0
        try:
            async for chunk in chunks:
                if length is not None and received + len(chunk) > length:
                    raise OversizedChunk(f"body is longer than the declared {length} bytes")
                received += len(chunk)
                await writer.feed(chunk)
            if length is not None and received != length:
                raise IncompleteChunk(f"got {received} of {length} bytes")
            await writer.finish()
        except BaseException:
            await writer.settle()
            if length is None and received and not writer.failed:
                # A streamed chunk keeps what arrived: make it the parts and tail it would have been.
                with contextlib.suppress(Exception):
                    await writer.finish()
                    await self._commit_record(upload_id, record, writer, state_after)
            raise
        return await self._commit_record(upload_id, record, writer, state_after)

    async def _commit_record(
        self, upload_id: str, record: dict[str, Any], writer: _PartWriter, state_after: StateAfter
    ) -> int:
        old_tail = record.get("tail")
        record["parts"] = writer.parts
        record["tail"], record["tail_size"], record["tail_md5"] = writer.tail_key, writer.tail_size, writer.tail_md5
        size = self._size(record)
        state = await state_after(size)
        record["hash"] = state.decode() if state is not None else None
        await self._save_record(upload_id, record)
        if old_tail and old_tail != writer.tail_key:
            with contextlib.suppress(StorageError, ClientError):
                await self._call("delete_object", Key=old_tail)
        return size

    async def read_upload(self, upload_id: str) -> AsyncIterator[bytes]:
        record = await self._seal(upload_id)
        if self._size(record) == 0:
            return
        response = await self._call("get_object", Key=self._data_key(upload_id, record))
        body = response["Body"]
        try:
            while data := await _in_thread(body.read, READ_CHUNK):
                yield data
        finally:
            body.close()

    async def _seal(self, upload_id: str) -> dict[str, Any]:
        """Complete the multipart upload (the tail as its last part), once: the session's bytes
        are then one object, ``uploads/<id>/data``, and it takes no more chunks."""
        record = await self._record(upload_id)
        if record.get("sealed"):
            return record
        parts = await self._parts(upload_id, record)
        data_key = self._data_key(upload_id, record)
        if record["tail"]:
            tail = await self._call("get_object", Key=record["tail"])
            body = await _in_thread(tail["Body"].read)
            if hashlib.md5(body).hexdigest() != record["tail_md5"]:
                raise StorageError(f"upload {upload_id}: its tail changed under it (two writers?)")
            number = parts[-1][0] + 1 if parts else 1
            part = await self._call("upload_part", Key=data_key, UploadId=record["mpu"], PartNumber=number, Body=body)
            parts.append([number, part["ETag"], len(body)])
        if parts:
            listing = [{"PartNumber": n, "ETag": etag} for n, etag, _ in parts]
            done = await self._call(
                "complete_multipart_upload",
                Key=data_key,
                UploadId=record["mpu"],
                MultipartUpload={"Parts": listing},
            )
            record["etag"] = str(done.get("ETag", "")).strip('"')
        else:  # S3 completes nothing without a part: the empty blob is a plain object
            await self._call("put_object", Key=data_key, Body=b"")
            with contextlib.suppress(ClientError):
                await self._call("abort_multipart_upload", Key=data_key, UploadId=record["mpu"])
        record.update(sealed=True, parts=parts, tail=None, tail_size=0)
        await self._save_record(upload_id, record)
        return record

    async def publish_upload(self, upload_id: str, digest: Digest, size: int) -> None:
        actual = await self.upload_size(upload_id)
        if actual != size:
            raise SizeMismatch(size, actual)
        try:
            existing: _Blob | None = await self._blob(digest)
        except BlobNotFound:
            existing = None
        if existing is not None and existing.size == size:
            # The same digest is the same bytes: the blob there stays, and this session's go.
            await self.abort_upload(upload_id)
            return
        record = await self._seal(upload_id)
        mine = _Blob(self._data_key(upload_id, record), size)
        await self._point(digest, mine)
        await self._remove_session(upload_id, record, keep=mine.key)
        # In the registry, two sessions publishing one digest take turns (the blob row's claim,
        # registry.gc), and the second one finds the first's blob above. Without that, both may
        # write the blob key: the last write stands, and a session that sees it lost deletes its
        # own bytes (one that looked before the other wrote keeps them: named by nothing).
        with contextlib.suppress(BlobNotFound):
            if (await self._blob(digest)).key != mine.key:
                with contextlib.suppress(ClientError):
                    await self._call("delete_object", Key=mine.key)

    async def _point(self, digest: Digest, blob: _Blob) -> None:
        """Write the blob key: an empty object naming where the bytes are."""
        if blob.key == self.blob_key(digest):
            return  # an earlier version's blob, its bytes at the key: rewriting it would copy them
        meta = {"hangar-data": blob.key[len(self.prefix) :], "hangar-size": str(blob.size)}
        await self._call("put_object", Key=self.blob_key(digest), Body=b"", Metadata=meta)

    async def abort_upload(self, upload_id: str) -> None:
        try:
            record: dict[str, Any] | None = await self._record(upload_id)
        except UploadNotFound:
            record = None
        await self._remove_session(upload_id, record)

    async def _remove_session(self, upload_id: str, record: dict[str, Any] | None, keep: str | None = None) -> None:
        """Abort the session's multipart upload, delete its record and tail, and its bytes unless
        they are ``keep`` (they became a blob's)."""
        try:
            _check_upload_id(upload_id)
        except UploadNotFound:
            return
        # Every multipart upload at the session's key (both layouts when there is no record to
        # say which): the recorded one, and any a crash left before its record was written.
        if record is not None:
            keys = {self._data_key(upload_id, record)}
        else:
            keys = {self._data_key(upload_id), self._upload_key(upload_id, "data")}
        for data_key in keys:
            uploads = await self._call("list_multipart_uploads", Prefix=data_key)
            for mpu in uploads.get("Uploads", []):
                if mpu["Key"] == data_key:
                    with contextlib.suppress(ClientError):
                        await self._call("abort_multipart_upload", Key=data_key, UploadId=mpu["UploadId"])
            # Without a record the session either never got one (no bytes yet) or was published
            # (its record goes last): its bytes may be a blob's, and stay.
            if record is not None and data_key != keep:
                with contextlib.suppress(ClientError):
                    await self._call("delete_object", Key=data_key)
        async for item in self._list(f"{self.prefix}uploads/{upload_id}/"):
            if item["Key"] != keep:
                with contextlib.suppress(ClientError):
                    await self._call("delete_object", Key=item["Key"])

    async def list_uploads(self) -> AsyncIterator[UploadInfo]:
        seen: set[str] = set()
        base = f"{self.prefix}uploads/"
        async for item in self._list(base):
            upload_id, _, name = item["Key"][len(base) :].partition("/")
            if name != "record" or upload_id in seen:
                continue
            seen.add(upload_id)
            try:
                size = await self.upload_size(upload_id)
            except (UploadNotFound, KeyError, ValueError, StorageError):
                size = 0
            yield UploadInfo(upload_id, size, item["LastModified"].timestamp())
        # Multipart uploads whose record never got written (a crash between the two calls).
        for prefix in (f"{self.prefix}data/", base):
            uploads = await self._call("list_multipart_uploads", Prefix=prefix)
            for mpu in uploads.get("Uploads", []):
                upload_id = mpu["Key"][len(prefix) :].partition("/")[0]
                if upload_id not in seen:
                    seen.add(upload_id)
                    yield UploadInfo(upload_id, 0, mpu["Initiated"].timestamp())


class _PartWriter:
    """Turns a chunk's bytes into parts of the session's multipart upload, one part in flight
    while the next one fills, and what is left into the tail."""

    def __init__(self, store: S3Store, upload_id: str, record: dict[str, Any]) -> None:
        self.store = store
        self.upload_id = upload_id
        self.mpu: str = record["mpu"]
        self.data_key = store._data_key(upload_id, record)
        self.parts: list[list[Any]] = [list(p) for p in record["parts"]]
        self.old_tail: str | None = record["tail"]
        self.old_tail_md5: str | None = record["tail_md5"]
        self.tail_key: str | None = record["tail"]
        self.tail_size: int = record["tail_size"]
        self.tail_md5: str | None = record["tail_md5"]
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending: asyncio.Future[None] | None = None
        self._next = (self.parts[-1][0] + 1) if self.parts else 1
        self.failed = False  # a part did not make it: nothing of this chunk may be kept

    async def load_tail(self) -> None:
        if not self.old_tail:
            return
        response = await self.store._call("get_object", Key=self.old_tail)
        body: bytes = await _in_thread(response["Body"].read)
        if hashlib.md5(body).hexdigest() != self.old_tail_md5:
            raise StorageError(f"upload {self.upload_id}: its tail changed under it (two writers?)")
        self._buffer, self._buffered = [body], len(body)

    async def feed(self, chunk: bytes) -> None:
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= PART_SIZE:
            data = b"".join(self._buffer)
            self._buffer, self._buffered = [], 0
            for start in range(0, len(data) - PART_SIZE + 1, PART_SIZE):
                await self._upload(data[start : start + PART_SIZE])
            rest = data[len(data) - len(data) % PART_SIZE :] if len(data) % PART_SIZE else b""
            if rest:
                self._buffer, self._buffered = [rest], len(rest)

    async def finish(self) -> None:
        """The last bytes: a part if S3 takes one that small, else the new tail object."""
        data = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        if len(data) >= MIN_PART:
            await self._upload(data)
            data = b""
        await self.settle(raise_errors=True)
        if data:
            key = self.store._upload_key(self.upload_id, f"tail-{uuid.uuid4().hex[:12]}")
            await self.store._call("put_object", Key=key, Body=data)
            self.tail_key, self.tail_size, self.tail_md5 = key, len(data), hashlib.md5(data).hexdigest()
        else:
            self.tail_key, self.tail_size, self.tail_md5 = None, 0, None

    async def _upload(self, data: bytes) -> None:
        await self.settle(raise_errors=True)
        number = self._next
        self._next += 1

        async def send() -> None:
            try:
                result = await self.store._call(
                    "upload_part", Key=self.data_key, UploadId=self.mpu, PartNumber=number, Body=data
                )
            except BaseException:
                self.failed = True
                raise
            self.parts.append([number, result["ETag"], len(data)])

        self._pending = asyncio.ensure_future(send())

    async def settle(self, raise_errors: bool = False) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            await pending
        except BaseException:
            if raise_errors:
                raise
