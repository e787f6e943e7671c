"""A hostile registry for the tests (issue #19, findings 12-14 and 16): a real HTTP server on
127.0.0.1 (starlette + uvicorn in a thread) whose answers attack the client's memory, disk, time
and terminal. The repository's namespace picks the attack: ``<host>/endless-manifest/m``,
``<host>/size-4611686018427387904/m``, … (see :class:`HostileRegistry`).

Bodies are generated as they are sent (an endless body or a 6 GB gzip bomb costs the test
nothing), and every request is counted, so a test can say how far the client went. Also here:
running a command while measuring its peak memory (``run_measured``), and watching a daemon's."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from formats import mediatypes as mt
from tests.frontends import ThreadedServer
from tests.servers import REPO_ROOT

MiB = 1024 * 1024
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mRED\r\x9b31m"  # retitle, clear screen, colour, CR, CSI
PIECE = 64 * 1024


def gzip_bomb(unpacked: int | None) -> Iterator[bytes]:
    """A gzip stream of ``unpacked`` zero bytes (None: endless), made as it is sent: after a
    full flush the compressor's output for another MiB of zeros repeats, so one small block is
    sent again and again (about 1 KB on the wire per MiB unpacked)."""
    z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(MiB)
    first = z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH)
    block = z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH)
    again = z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH)
    assert block == again, "the compressor's output did not settle"
    yield first
    sent = 2 * MiB  # first, plus the block that ends the stream below
    while unpacked is None or sent < unpacked:
        yield block * 64  # 64 MiB unpacked per piece
        sent += 64 * MiB
    yield block + z.flush()


def endless(piece: bytes = b" " * PIECE) -> Iterator[bytes]:
    while True:
        yield piece


async def _paced(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Yield to the event loop between pieces, so one endless body does not starve the others."""
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)


def blob_descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


@dataclass
class Model:
    manifest: bytes
    content_type: str = mt.DOCKER_MANIFEST


class HostileRegistry:
    """Attacks, by namespace (``<host>/<attack>/<anything>``):

    - ``endless-manifest``, ``bomb-manifest``, ``drip-manifest``: the manifest GET body never
      ends / is a gzip bomb / drips a byte every ``drip`` seconds;
    - ``endless-404``, ``bomb-404``, ``escape``: a 404 whose body never ends / is a bomb / holds
      terminal escape sequences;
    - ``token-endless``, ``token-bomb``: a 401 sends the client to a token answer that never ends
      / is a bomb; ``challenge-endless``: the 401's own body never ends;
    - ``size-<N>``: the layer declares N bytes (``size-negative``: -1, ``size-fraction``: 1.5,
      ``size-string``: "12");
    - ``chunks``: a 2 MB blob with 2,000,000 one-byte chunk sums; ``chunks-endless``,
      ``chunks-bomb``: its chunk sums never end / are a bomb;
    - ``drip-blob``: the blob's bytes drip; ``index-image``: an image manifest (by its
      Content-Type) with a stray ``"manifests": []``; anything else: a plain valid model.

    Tags (``GET /v2/<attack>/<m>/tags/list``): ``self-link`` (a Link to itself), ``endless-pages``
    (a new page forever), ``escape`` (tags holding escape sequences), ``endless-tags`` (a body
    that never ends)."""

    def __init__(self, drip: float = 1.0) -> None:
        self.drip = drip
        self.requests: Counter[str] = Counter()  # by attack and kind: "self-link tags" …
        self.weights = os.urandom(2_000_000)
        self.config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
        self.blobs = {blob_descriptor("", d)["digest"]: d for d in (self.weights, self.config)}
        self.server = ThreadedServer(self.app())

    def __enter__(self) -> HostileRegistry:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.server.__exit__(*exc)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def name(self, attack: str, model: str = "m") -> str:
        return f"{self.host}/{attack}/{model}:latest"

    # -- documents ------------------------------------------------------------------------------

    def manifest(self, *, size: object = None, extra: dict[str, object] | None = None, typed: bool = True) -> bytes:
        layer = blob_descriptor(mt.OLLAMA_MODEL, self.weights)
        if size is not None:
            layer["size"] = size
        doc: dict[str, object] = {"schemaVersion": 2}
        if typed:
            doc["mediaType"] = mt.DOCKER_MANIFEST
        doc |= {"config": blob_descriptor(mt.DOCKER_CONFIG, self.config), "layers": [layer], **(extra or {})}
        return json.dumps(doc).encode()

    # -- the app --------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v2/", lambda _: JSONResponse({})),
                Route("/v2/{attack}/{model}/manifests/{ref}", self._manifest, methods=["GET", "HEAD"]),
                Route("/v2/{attack}/{model}/blobs/{digest}", self._blob, methods=["GET", "HEAD"]),
                Route("/v2/{attack}/{model}/chunksums/{digest}", self._chunk_sums),
                Route("/v2/{attack}/{model}/tags/list", self._tags),
                Route("/token", self._token),
            ]
        )

    async def _manifest(self, request: Request) -> Response:
        attack = request.path_params["attack"]
        self.requests[f"{attack} manifest"] += 1
        if request.method == "HEAD":  # no Docker-Content-Digest: `hangar outdated` must GET it
            return Response(status_code=200, media_type=mt.DOCKER_MANIFEST)
        if attack == "endless-manifest":
            return StreamingResponse(_paced(endless()), media_type=mt.DOCKER_MANIFEST)
        if attack == "bomb-manifest":
            return self._bomb(200, mt.DOCKER_MANIFEST)
        if attack == "drip-manifest":
            return StreamingResponse(
                self._dripping(b'{"schemaVersion": 2' + b" " * 10_000), media_type=mt.DOCKER_MANIFEST
            )
        if attack == "endless-404":
            return StreamingResponse(_paced(endless()), status_code=404, media_type="application/json")
        if attack == "bomb-404":
            return self._bomb(404, "application/json")
        if attack == "escape":
            envelope = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": f"no such thing {ESCAPES}"}]}
            return JSONResponse(envelope, status_code=404)
        if attack in ("token-endless", "token-bomb", "challenge-endless"):
            if request.headers.get("authorization") == "Bearer hostile":
                return Response(self.manifest(), media_type=mt.DOCKER_MANIFEST)
            realm = f'Bearer realm="http://{self.host}/token?attack={attack}",service="{self.host}"'
            headers = {"WWW-Authenticate": realm + f',scope="repository:{attack}/m:pull"'}
            if attack == "challenge-endless":
                return StreamingResponse(_paced(endless()), status_code=401, headers=headers)
            return Response(status_code=401, headers=headers)
        if attack.startswith("size-"):
            text = attack.removeprefix("size-")
            size = _ODD_SIZES[text] if text in _ODD_SIZES else int(text)
            return Response(self.manifest(size=size), media_type=mt.DOCKER_MANIFEST)
        if attack == "index-image":
            raw = self.manifest(extra={"manifests": []}, typed=False)
            return Response(raw, media_type=mt.DOCKER_MANIFEST)
        return Response(self.manifest(), media_type=mt.DOCKER_MANIFEST)  # good, chunks*, drip-blob

    async def _token(self, request: Request) -> Response:
        attack = request.query_params.get("attack", "")
        self.requests[f"{attack} token"] += 1
        if attack == "token-endless":
            return StreamingResponse(_paced(endless()), media_type="application/json")
        if attack == "token-bomb":
            return self._bomb(200, "application/json")
        return JSONResponse({"token": "hostile", "expires_in": 300})

    async def _blob(self, request: Request) -> Response:
        attack = request.path_params["attack"]
        self.requests[f"{attack} blob"] += 1
        data = self.blobs.get(request.path_params["digest"])
        if data is None:
            return Response(status_code=404)
        first, last = 0, len(data) - 1
        if rng := request.headers.get("range"):
            a, b = rng.removeprefix("bytes=").split("-")
            first, last = int(a), min(int(b), len(data) - 1)
            if first >= len(data):  # past the real blob (its declared size lied)
                return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
        headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}", "Content-Length": str(last - first + 1)}
        body = data[first : last + 1]
        if attack == "drip-blob" and len(data) > 1000:
            return StreamingResponse(self._dripping(body), status_code=206, headers=headers)
        return Response(body, status_code=206 if rng else 200, headers=headers)

    async def _chunk_sums(self, request: Request) -> Response:
        attack = request.path_params["attack"]
        self.requests[f"{attack} chunksums"] += 1
        if request.path_params["digest"] != blob_descriptor("", self.weights)["digest"]:
            return Response(status_code=404)
        if attack == "chunks":
            return StreamingResponse(_paced(self._one_byte_chunks()), media_type="text/plain")
        if attack == "chunks-endless":
            return StreamingResponse(_paced(endless()), media_type="text/plain")
        if attack == "chunks-bomb":
            return self._bomb(200, "text/plain")
        return Response(status_code=404)

    def _one_byte_chunks(self) -> Iterator[bytes]:
        """2,000,000 chunk sums of one byte each, all correct (the attack is their number)."""
        lines = []
        for i, byte in enumerate(self.weights):
            lines.append(f"sha256:{_BYTE_SUMS[byte]} {i}-{i}\n")
            if len(lines) == 1000:
                yield "".join(lines).encode()
                lines = []
        yield "".join(lines).encode()

    async def _tags(self, request: Request) -> Response:
        attack = request.path_params["attack"]
        self.requests[f"{attack} tags"] += 1
        path = request.url.path
        if attack == "self-link":
            return JSONResponse({"tags": ["v1"]}, headers={"Link": f'<{path}?n=1000>; rel="next"'})
        if attack == "endless-pages":
            page = int(request.query_params.get("page", "0")) + 1
            tags = [f"p{page}-{i}" for i in range(100)]
            return JSONResponse({"tags": tags}, headers={"Link": f'<{path}?page={page}>; rel="next"'})
        if attack == "escape":
            return JSONResponse({"name": "escape/m", "tags": ["v1", f"evil{ESCAPES}"]})
        if attack == "endless-tags":
            return StreamingResponse(_paced(endless()), media_type="application/json")
        return JSONResponse({"tags": ["latest"]})

    # -- bodies ---------------------------------------------------------------------------------

    def _bomb(self, status: int, media_type: str) -> Response:
        """6 GB unpacked, about 6 MB on the wire."""
        return StreamingResponse(
            _paced(gzip_bomb(6 * 1000**3)), status_code=status, media_type=media_type,
            headers={"Content-Encoding": "gzip"},
        )  # fmt: skip

    async def _dripping(self, body: bytes) -> AsyncIterator[bytes]:
        for i in range(len(body)):
            yield body[i : i + 1]
            await asyncio.sleep(self.drip)


_ODD_SIZES: dict[str, object] = {"negative": -1, "fraction": 1.5, "string": "12"}  # size-<key>
_BYTE_SUMS = [hashlib.sha256(bytes([b])).hexdigest() for b in range(256)]


# -- measuring the client ----------------------------------------------------------------------


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes: the child's maximum resident set size
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


ADDRESS_SPACE_LIMIT = 3 * 1024**3  # a client gone wild dies here instead of taking the test machine


# The measured command is started by a small Python of its own, which reports the command's
# rusage: a child forked straight from pytest would count pytest's own pages (they are its until
# exec, and Linux keeps the larger high-water mark), so after a test that loaded torch every
# client would seem to peak at half a gigabyte.
_MEASURE = """
import json, os, resource, subprocess, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
proc = subprocess.Popen(sys.argv[3:])
try:
    _, status, usage = os.wait4(proc.pid, 0)
except KeyboardInterrupt:
    proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[2], "w") as f:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "maxrss": usage.ru_maxrss * 1024}, f)
"""


def run_measured(
    args: Sequence[str], home: Path, *, timeout: float = 120, env: dict[str, str] | None = None
) -> Measured:
    """Run ``python -m cli.main ARGS`` with ``HANGAR_HOME=home`` and measure its peak memory
    (``wait4``'s rusage of that one process, taken by a small parent of its own). Past
    ``timeout`` the command is killed: the result then says returncode -9."""
    out, err = home.parent / f"{home.name}.out", home.parent / f"{home.name}.err"
    report = home.parent / f"{home.name}.rusage"
    full_env = {**os.environ, "HANGAR_HOME": str(home), **(env or {})}
    full_env.pop("HANGAR_MODELS", None)
    started = time.monotonic()
    command = [sys.executable, "-m", "cli.main", *args]
    measure = [sys.executable, "-c", _MEASURE, str(ADDRESS_SPACE_LIMIT), str(report), *command]
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(measure, stdout=o, stderr=e, env=full_env, cwd=REPO_ROOT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # the measuring parent kills the command, then reports
            proc.wait()
    result = json.loads(report.read_text())
    return Measured(
        result["returncode"], out.read_text(errors="replace"), err.read_text(errors="replace"),
        result["maxrss"], time.monotonic() - started,
    )  # fmt: skip


def peak_rss(pid: int) -> int:
    """Bytes: a running process's peak resident set size so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")
