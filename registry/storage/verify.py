"""Hashing and verification above every backend: the whole-blob sha256 and the 16 MiB chunk sums.

``VerifiedStore`` is what the registry talks to. It hashes the bytes of each upload while they
stream to the backend, and publishes an upload under a digest only once they match it.

The running hash is kept with the upload session, in the backend (``append_upload`` stores it with
each chunk): the next chunk may land on another worker or replica, or come after a restart, and
continues from that state instead of re-reading what the store holds (on an object store, a
re-read would cost the whole upload again). ``hashlib`` cannot save its state, so the sha256 here
is OpenSSL's own (``SHA256_CTX``, through ctypes: the same code and speed as ``hashlib``, and the
context is a plain struct that can be saved and loaded). Where libcrypto cannot be loaded, or the
saved state is missing or behind (a crash between a write and its save), the commit re-reads the
upload once to hash it, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from formats.digest import Digest
from registry.storage.base import (
    CHUNK_SIZE,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    DigestMismatch,
    EtagMismatch,
    SizeMismatch,
    UploadInfo,
)

HASH_BATCH = 4 * 1024 * 1024  # hash (and hand to the backend) in batches this large
T = TypeVar("T")


def _in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Start ``fn`` in the default thread pool now; await the result later."""
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _load_libcrypto() -> Any:
    for name in (ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)  # CDLL releases the GIL during calls: threads hash in parallel
            for fn in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
                fn.restype = ctypes.c_int
            lib.SHA256_Init.argtypes = [ctypes.c_void_p]
            lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            lib.SHA256_Final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            return lib
        except (OSError, AttributeError):
            continue
    return None


_LIB = _load_libcrypto()
_CTX_SIZE = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len (all 32-bit)
# Saved states name the code that wrote them; another one (a replica on another architecture)
# ignores them and re-reads instead.
_STATE_KIND = f"openssl-sha256-ctx/{_CTX_SIZE}/{sys.byteorder}"


class Sha256:
    """sha256 whose running state can be saved as bytes and loaded again."""

    def __init__(self, state: bytes | None = None) -> None:
        if _LIB is None:
            raise RuntimeError("libcrypto is not available")
        self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
        if state is None:
            _LIB.SHA256_Init(self._ctx)
        elif len(state) == _CTX_SIZE:
            ctypes.memmove(self._ctx, state, _CTX_SIZE)
        else:
            raise ValueError("not a sha256 state")

    def update(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        end = len(data) if end is None else end
        if end > start:
            base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
            _LIB.SHA256_Update(self._ctx, base + start, end - start)

    def state(self) -> bytes:
        return self._ctx.raw

    def hexdigest(self) -> str:
        ctx = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)  # Final consumes its context
        out = ctypes.create_string_buffer(32)
        _LIB.SHA256_Final(out, ctx)
        return out.raw.hex()


class _HashlibSha256:
    """The fallback without libcrypto: the same interface, a state that cannot be saved."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._h.update(memoryview(data)[start:end])

    def state(self) -> bytes:
        # Never reached: ContentHash.state answers None without libcrypto before asking.
        raise RuntimeError("hashlib's SHA-256 state cannot be saved")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _new_sha256() -> Sha256 | _HashlibSha256:
    return Sha256() if _LIB is not None else _HashlibSha256()


class ContentHash:
    """The sha256 of a stream and of each ``CHUNK_SIZE`` chunk of it, fed as bytes arrive."""

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self.size = 0
        self.chunks: list[str] = []
        self._whole = _new_sha256()
        self._chunk = _new_sha256()
        self._in_chunk = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data) if not isinstance(data, bytes) else data
        self.update_whole(data)
        self.update_chunks(data)

    # The two halves of ``update``, which may run in two threads at once (one call of each per
    # piece of data, in order): two passes of sha256 cost twice one.
    def update_whole(self, data: bytes) -> None:
        self._whole.update(data)
        self.size += len(data)

    def update_chunks(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            take = min(len(data) - pos, self.chunk_size - self._in_chunk)
            self._chunk.update(data, pos, pos + take)
            self._in_chunk += take
            pos += take
            if self._in_chunk == self.chunk_size:
                self.chunks.append(self._chunk.hexdigest())
                self._chunk = _new_sha256()
                self._in_chunk = 0

    def digest(self) -> Digest:
        return Digest(self._whole.hexdigest())

    def chunk_sums(self) -> tuple[str, ...]:
        tail = [self._chunk.hexdigest()] if self._in_chunk else []
        return (*self.chunks, *tail)

    def state(self) -> bytes | None:
        """The running state as bytes (None where it cannot be saved)."""
        if _LIB is None:
            return None
        record = {
            "kind": _STATE_KIND,
            "chunk_size": self.chunk_size,
            "size": self.size,
            "whole": self._whole.state().hex(),
            "chunk": self._chunk.state().hex(),
            "in_chunk": self._in_chunk,
            "chunks": self.chunks,
        }
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def restore(cls, state: bytes | None) -> ContentHash | None:
        """The hash a saved ``state`` describes; None for a missing, foreign or damaged one."""
        if state is None or _LIB is None:
            return None
        try:
            record = json.loads(state)
            if record["kind"] != _STATE_KIND:
                return None
            h = cls(int(record["chunk_size"]))
            h.size, h._in_chunk = int(record["size"]), int(record["in_chunk"])
            h._whole = Sha256(bytes.fromhex(record["whole"]))
            h._chunk = Sha256(bytes.fromhex(record["chunk"]))
            h.chunks = [str(c) for c in record["chunks"]]
            return h
        except (ValueError, KeyError, TypeError):
            return None


class _HashingFeed:
    """Pass a body on to a backend in batches, hashing each batch in two threads (whole blob and
    chunk sums) while the backend writes it and the next one arrives."""

    def __init__(self, chunks: AsyncIterator[bytes], hasher: ContentHash | None) -> None:
        self.chunks = chunks
        self.hasher = hasher
        self._pending: list[asyncio.Future[None]] = []

    async def batches(self) -> AsyncGenerator[bytes, None]:
        batch: list[bytes] = []
        batched = 0
        async for chunk in self.chunks:
            batch.append(chunk)
            batched += len(chunk)
            if batched >= HASH_BATCH:
                data = b"".join(batch)
                batch, batched = [], 0
                await self._hash(data)
                yield data
        if batch:
            data = b"".join(batch)
            await self._hash(data)
            yield data

    async def _hash(self, data: bytes) -> None:
        await self.settle(raise_errors=True)
        if self.hasher is not None:
            self._pending = [_in_thread(self.hasher.update_whole, data), _in_thread(self.hasher.update_chunks, data)]

    async def settle(self, raise_errors: bool = False) -> None:
        pending, self._pending = self._pending, []
        results = await asyncio.gather(*pending, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and raise_errors:
            raise errors[0]


# Made once an upload's bytes are verified, just before they are published under their digest
# (``registry.gc.claimer``: the blob row's generation, which gc changes when it takes the row to
# delete the bytes). Waits while gc deletes them; raises BlobBeingCollected when it takes too long.
Claim = Callable[[Digest, int], Awaitable[str]]
# Undoes a claim whose bytes were not published after all (``registry.gc.releaser``); ``present``
# says whether the store has bytes under the digest, so that a row made by the claim for bytes
# that never came is deleted rather than left naming nothing.
Release = Callable[[Digest, str, bool], Awaitable[None]]


class VerifiedStore:
    """The blob store the registry uses: a backend, with hashing and verification on top."""

    def __init__(self, backend: BlobStore) -> None:
        self.backend = backend
        # Set by the app (registry.app) where gc may delete blobs; without it, publishes claim nothing.
        self.claim: Claim | None = None
        self.release: Release | None = None

    async def ready(self) -> None:
        await self.backend.ready()

    @property
    def part_urls(self) -> bool:
        return self.backend.part_urls

    @property
    def exclusive_appends(self) -> bool:
        return self.backend.exclusive_appends

    # -- blobs: the backend's, as they are -------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo:
        return await self.backend.stat(digest)

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self.backend.read(digest, offset, length)

    async def delete(self, digest: Digest) -> None:
        await self.backend.delete(digest)

    def list(self) -> AsyncIterator[BlobInfo]:
        return self.backend.list()

    async def redirect_url(self, digest: Digest, expires_in: int) -> str | None:
        return await self.backend.redirect_url(digest, expires_in)

    # -- uploads ---------------------------------------------------------------------------

    async def start_upload(self, upload_id: str) -> None:
        await self.backend.start_upload(upload_id, ContentHash().state())

    async def upload_size(self, upload_id: str) -> int:
        return await self.backend.upload_size(upload_id)

    async def append_upload(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes], length: int | None) -> int:
        """Append a chunk at ``offset`` (see ``BlobStore.append_upload``), hashing it on the way."""
        hasher = ContentHash.restore(await self.backend.load_state(upload_id))
        if hasher is not None and hasher.size != offset:
            hasher = None  # the state is behind (or the offset wrong): the commit re-reads
        feed = _HashingFeed(chunks, hasher)

        async def state_after(size: int) -> bytes | None:
            await feed.settle(raise_errors=True)
            return hasher.state() if hasher is not None and hasher.size == size else None

        batches = feed.batches()
        try:
            return await self.backend.append_upload(upload_id, offset, batches, length, state_after)
        finally:
            await batches.aclose()
            await feed.settle()

    async def part_url(self, upload_id: str, offset: int, length: int, expires_in: int) -> str | None:
        """Where the client may send this chunk itself (``BlobStore.part_url``), or None."""
        return await self.backend.part_url(upload_id, offset, length, expires_in)

    async def commit_upload(
        self, upload_id: str, digest: Digest, size: int | None = None, etag: str | None = None
    ) -> BlobInfo:
        """Verify the upload's bytes against ``digest`` (and ``size``, and for parts sent to the
        object store the client's S3-style ``etag``) and publish them under it.

        On DigestMismatch, SizeMismatch or EtagMismatch the upload is discarded and nothing is
        published. The ``claim`` comes between the check and the publish: where it raises
        (BlobBeingCollected), the upload stays as it was and the commit can be sent again."""
        actual_size = await self.backend.upload_size(upload_id)
        if size is not None and size != actual_size:
            await self.backend.abort_upload(upload_id)
            raise SizeMismatch(size, actual_size)
        content = ContentHash.restore(await self.backend.load_state(upload_id))
        if content is None or content.size != actual_size:
            content = await self._rehash(upload_id)
        actual = content.digest()
        if actual != digest or content.size != actual_size:
            await self.backend.abort_upload(upload_id)
            raise DigestMismatch(digest, actual)
        stored_etag = await self.backend.upload_etag(upload_id) if etag else None
        if etag and stored_etag is not None and stored_etag != etag.strip('"'):
            await self.backend.abort_upload(upload_id)
            raise EtagMismatch(etag, stored_etag)
        generation = await self.claimed(digest, actual_size)
        try:
            await self.backend.publish_upload(upload_id, digest, actual_size)
        except Exception:
            # Else the claim would hold the row for its whole hold, and the next push of these
            # bytes (the client's retry) would wait for it. A release that fails leaves just that.
            with contextlib.suppress(Exception):
                await self.release_claim(digest, generation)
            raise
        return BlobInfo(digest, actual_size, content.chunk_sums(), generation)

    async def claimed(self, digest: Digest, size: int) -> str | None:
        """The ``claim`` on ``digest``'s row before its bytes are published or linked (None where
        nothing is claimed): gc does not delete them until the link ends it."""
        return await self.claim(digest, size) if self.claim is not None else None

    async def release_claim(self, digest: Digest, generation: str | None) -> None:
        """Let go of a claim (``claimed``) whose bytes were not published or linked after all."""
        if generation is None or self.release is None:
            return
        try:
            await self.backend.stat(digest)
            present = True
        except BlobNotFound:
            present = False
        await self.release(digest, generation, present)

    async def abort_upload(self, upload_id: str) -> None:
        await self.backend.abort_upload(upload_id)

    def list_uploads(self) -> AsyncIterator[UploadInfo]:
        return self.backend.list_uploads()

    # -- internals ---------------------------------------------------------------------------

    async def _rehash(self, upload_id: str) -> ContentHash:
        content = ContentHash()
        async for data in self.backend.read_upload(upload_id):
            await _in_thread(content.update, data)
        return content


async def put_blob(
    store: VerifiedStore, upload_id: str, digest: Digest, chunks: AsyncIterator[bytes], length: int | None
) -> BlobInfo:
    """Store a whole blob in one go (a monolithic upload)."""
    await store.start_upload(upload_id)
    try:
        await store.append_upload(upload_id, 0, chunks, length)
        return await store.commit_upload(upload_id, digest, length)
    except BaseException:
        await store.abort_upload(upload_id)
        raise
