"""What a registry's answers may cost the client: caps on the size and time of every body that is
not blob data, the reader that enforces them, and the limits on declared blob sizes and chunk
sums (issue #19, findings 12-14 and 16).

A registry is not trusted with the client's memory, disk or time. Blob bytes stream to disk (see
client.pull) and are bounded by the sizes checked here; everything else (manifests, tokens, error
bodies, tag pages, chunk sums) is read through :func:`read_body`, which stops at a cap on the
*unpacked* size (gzip and deflate are decoded here, a bounded slice at a time, so a gzip bomb
costs no more than its cap) and at an overall deadline, however slowly the bytes drip in.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import zlib
from typing import TYPE_CHECKING

import httpx

from client import errors
from client.credentials import origin_text
from formats.manifest import MAX_MANIFEST_BYTES

if TYPE_CHECKING:
    from pathlib import Path

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4

ACCEPT_ENCODING = "gzip, deflate"  # what the reader below can unpack a bounded slice at a time
MANIFEST_LIMIT = MAX_MANIFEST_BYTES  # 4 MiB, as the registry takes
ERROR_BODY_LIMIT = 64 * KiB  # an error answer is read this far for its message, then dropped
TOKEN_LIMIT = 64 * KiB  # a token answer: a JWT of a few hundred bytes, some JSON around it
SMALL_BODY_LIMIT = 1 * MiB  # any other control answer (upload sessions, account API)
TAGS_PAGE_LIMIT = 4 * MiB  # one page of a tag list (1,000 tags of 128 characters is 130 KB)
TAGS_MAX_PAGES = 1000  # pages followed by `hangar tags` …
TAGS_MAX = 100_000  # … and tags collected, whichever comes first

# The longest a request for a small answer may take, first byte to last (a body dripping a byte
# every 20 s passes every per-read timeout). Blob transfers have a minimum rate instead
# (client.pull). HANGAR_REQUEST_TIMEOUT overrides it, in seconds, for very slow links.
REQUEST_DEADLINE = 120.0

# The largest blob a pull or import accepts. The biggest single-file weights published today
# (a 1T-parameter model at bf16) are about 2 TB; twice that leaves room for growth while
# refusing the 2^44..2^62-byte lies that planned billions of parts or tripped "File too large".
MAX_BLOB_SIZE = 4 * TiB
# Free space a pull or import leaves on the store's filesystem (state files, manifests, and the
# rest of the system).
SPACE_HEADROOM = 64 * MiB

# Chunk sums (GET /v2/<name>/chunksums/<digest>) are advice for repairs, not required: ones with
# chunks smaller than this (the last excepted) or more of them than this are ignored and the blob
# is verified whole. Hangar's registry uses 16 MiB chunks: 131,072 of them for a 2 TiB blob.
MIN_CHUNK_SIZE = 1 * MiB
MAX_CHUNKS = 262_144
CHUNK_LINE_BYTES = 120  # "sha256:<64 hex> <first>-<last>\n" with 20-digit offsets is 113


def request_deadline() -> float:
    try:
        return max(0.1, float(os.environ["HANGAR_REQUEST_TIMEOUT"]))
    except (KeyError, ValueError):
        return REQUEST_DEADLINE


def chunk_sums_limit(blob_size: int) -> int:
    """Bytes a chunk-sums answer for a blob of ``blob_size`` may take: one line per chunk of at
    least MIN_CHUNK_SIZE (and never more than MAX_CHUNKS)."""
    chunks = min(MAX_CHUNKS, blob_size // MIN_CHUNK_SIZE + 1)
    return chunks * CHUNK_LINE_BYTES


# -- reading bodies --------------------------------------------------------------------------------


class BodyTooLarge(errors.ResponseRejected):
    """An answer past its cap (only raised where ``truncate`` is false)."""


class _Decoder:
    """Content-Encoding undone a bounded slice at a time: ``feed`` never returns more than the
    ``room`` it is given, keeping the rest of its input for the next call."""

    def __init__(self, encoding: str, what: str) -> None:
        codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise errors.ResponseRejected(f"{what}: the registry answered with Content-Encoding {encoding!r}")
        self.coding = codings[0] if codings else None
        wbits = zlib.MAX_WBITS | 16 if self.coding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._z = zlib.decompressobj(wbits) if self.coding else None
        self._first = True
        self._pending = b""

    def feed(self, data: bytes, room: int) -> bytes:
        if self._z is None:
            return data  # the caller cuts plain bytes to size itself
        data = self._pending + data
        self._pending = b""
        try:
            out = self._z.decompress(data, room)
        except zlib.error:
            if not (self._first and self.coding == "deflate"):
                raise
            # Some servers send raw deflate without the zlib header (as httpx also allows).
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._z.decompress(data, room)
        self._first = False
        self._pending = self._z.unconsumed_tail
        return out

    @property
    def has_more(self) -> bool:
        return bool(self._pending)


class _BodyReader:
    """One body being read: raw chunks undone by the decoder into parts until the end, ``limit``
    + 1 bytes or the deadline; then the body, or the error that says why there is none. The
    same for httpx's asynchronous and synchronous clients, which differ only in how they iterate."""

    def __init__(self, response: httpx.Response, limit: int, what: str, truncate: bool) -> None:
        self.response, self.limit, self.what, self.truncate = response, limit, what, truncate
        self.started = time.monotonic()
        self.deadline = request_deadline()
        self.decoder = _Decoder(response.headers.get("content-encoding", ""), what)
        self.parts: list[bytes] = []
        self.total = 0
        self.over = self.late = False

    def feed(self, raw: bytes) -> bool:
        """Take one raw chunk; True once reading must stop (over the limit or past the deadline)."""
        out = self.decoder.feed(raw, self.limit + 1 - self.total)
        while True:
            self.parts.append(out)
            self.total += len(out)
            if self.total > self.limit:
                self.over = True
                return True
            if not self.decoder.has_more:
                break
            out = self.decoder.feed(b"", self.limit + 1 - self.total)
        self.late = time.monotonic() - self.started > self.deadline
        return self.late

    def failed(self, error: httpx.TransportError) -> None:
        """The connection broke: an error, unless ``truncate`` keeps what came."""
        if not self.truncate:
            raise errors.RegistryUnreachable(
                f"{self.what}: reading the answer from {origin_text(self.response.request.url)} failed: {error}"
            ) from None

    def finish(self) -> bytes:
        limit, what, truncate = self.limit, self.what, self.truncate
        body = b"".join(self.parts)[: limit if truncate else None]
        if self.late and not truncate:
            raise errors.RegistryUnreachable(
                f"{what}: {origin_text(self.response.request.url)} is sending its answer too slowly (still "
                f"unfinished after {request_deadline():.0f} s)"
            )
        if self.over and not truncate:
            raise BodyTooLarge(f"{what}: the registry's answer is larger than {_size(limit)}; refusing to read on")
        # httpx keeps a read body in _content (Response.aread does the same); .content, .text and
        # .json() then use it, and httpx's own aread (in its auth flow) finds the body read.
        self.response._content = body
        return body


async def read_body(response: httpx.Response, limit: int, what: str, *, truncate: bool = False) -> bytes:
    """Read a streamed httpx response's body, unpacked, to at most ``limit`` bytes within the
    request deadline, then close it. Past either, raise a clear ``client.errors`` error, or with
    ``truncate`` (error bodies: only their message matters) keep what came. A body read
    before is returned as it is."""
    if hasattr(response, "_content"):
        return response.content
    body = _BodyReader(response, limit, what, truncate)
    try:
        async for raw in response.aiter_raw():
            if body.feed(raw):
                break
    except httpx.TransportError as e:
        body.failed(e)
    finally:
        await response.aclose()
    return body.finish()


def read_body_sync(response: httpx.Response, limit: int, what: str, *, truncate: bool = False) -> bytes:
    """:func:`read_body` for httpx's synchronous client."""
    if hasattr(response, "_content"):
        return response.content
    body = _BodyReader(response, limit, what, truncate)
    try:
        for raw in response.iter_raw():
            if body.feed(raw):
                break
    except httpx.TransportError as e:
        body.failed(e)
    finally:
        response.close()
    return body.finish()


# -- declared sizes --------------------------------------------------------------------------------


def check_blob_size(size: object, what: str) -> int:
    """A declared blob size as an int, refused when it is not a non-negative integer or exceeds
    MAX_BLOB_SIZE."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise errors.ResponseRejected(f"{what}: declared size {size!r} is not a non-negative integer")
    if size > MAX_BLOB_SIZE:
        raise errors.ResponseRejected(
            f"{what}: declares {size} bytes ({_size(size)}); Hangar refuses blobs over {_size(MAX_BLOB_SIZE)}"
        )
    return size


def check_free_space(directory: Path, needed: int, what: str) -> None:
    """Refuse to start writing ``needed`` bytes into ``directory``'s filesystem when that would
    leave it less than SPACE_HEADROOM free."""
    if needed <= 0:
        return
    free = shutil.disk_usage(directory).free
    if needed > free - SPACE_HEADROOM:
        raise errors.NotEnoughSpace(
            f"{what}: needs {_size(needed)} (and keeps {_size(SPACE_HEADROOM)} free) but {directory} has "
            f"{_size(max(free, 0))} free; free some space (hangar prune, hangar rm) or set HANGAR_MODELS to a "
            "larger disk"
        )


def disk_full(error: OSError, directory: Path, remaining: int, what: str) -> errors.NotEnoughSpace | None:
    """The error to show for a write that found ``directory``'s disk full after the free-space
    check passed (another writer took the space meanwhile), or None for any other OSError."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return errors.NotEnoughSpace(
        f"{what}: the disk holding {directory} is full ({error.strerror}) with {_size(remaining)} still to "
        "write; free some space (hangar prune, hangar rm) or set HANGAR_MODELS to a larger disk, and run it "
        "again: it resumes where it stopped"
    )


def _size(n: int) -> str:
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"
