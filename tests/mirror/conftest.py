"""What the mirror tests share: a counting (and, on request, lying or failing) proxy in front of an
upstream registry, so that a test sees every byte the mirror fetched from it, and a mirror factory."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from formats import mediatypes as mt
from tests.frontends import ThreadedServer
from tests.helpers import ollama_manifest
from tests.servers import RegistryProcess

_BLOB = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})$")
_HOP = {"host", "transfer-encoding", "connection"}


@dataclass
class Traffic:
    """What the upstream sent the mirror through the proxy."""

    blob_bytes: int = 0
    blob_gets: Counter[str] = field(default_factory=Counter)  # digest -> GETs answered 200/206
    ranges: list[str] = field(default_factory=list)  # Range headers of blob GETs
    manifest_requests: list[str] = field(default_factory=list)  # "METHOD path"
    corrupt: set[str] = field(default_factory=set)  # digests whose first byte is flipped
    cut_after: dict[str, int] = field(default_factory=dict)  # digest -> break the body after N bytes, once
    down: bool = False  # answer 502 to everything (the upstream is gone)


def proxy_app(upstream: str, traffic: Traffic) -> Starlette:
    client = httpx.AsyncClient(timeout=60)

    async def forward(request: Request) -> Response:
        if traffic.down:
            return Response(b"upstream down", status_code=502)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        upstream_request = client.build_request(
            request.method, upstream + path, headers=headers, content=await request.body()
        )
        r = await client.send(upstream_request, stream=True)
        m = _BLOB.match(request.url.path)
        digest = m.group(1) if m and request.method == "GET" else None
        if "/manifests/" in request.url.path:
            traffic.manifest_requests.append(f"{request.method} {request.url.path}")
        if digest and r.status_code in (200, 206):
            traffic.blob_gets[digest] += 1
            traffic.ranges.append(request.headers.get("range", ""))
        cut = traffic.cut_after.pop(digest, None) if digest else None

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            async for chunk in r.aiter_raw():
                if digest and digest in traffic.corrupt and sent == 0 and chunk:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                if cut is not None and sent + len(chunk) > cut:
                    chunk = chunk[: cut - sent]
                    traffic.blob_bytes += len(chunk)
                    yield chunk
                    raise ConnectionError("the proxy cuts this body short")
                sent += len(chunk)
                if digest:
                    traffic.blob_bytes += len(chunk)
                yield chunk

        out = {k: v for k, v in r.headers.items() if k.lower() not in _HOP}
        if request.method == "HEAD":
            await r.aclose()
            return Response(status_code=r.status_code, headers=out)
        return StreamingResponse(body(), status_code=r.status_code, headers=out, background=BackgroundTask(r.aclose))

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


@pytest.fixture
def counting_proxy() -> Iterator[Callable[[str], tuple[str, Traffic]]]:
    """``proxy(upstream URL) -> (proxy URL, Traffic)``."""
    servers: list[ThreadedServer] = []

    def make(upstream: str) -> tuple[str, Traffic]:
        traffic = Traffic()
        server = ThreadedServer(proxy_app(upstream, traffic)).__enter__()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}", traffic

    yield make
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def make_mirror(tmp_path: Path) -> Iterator[Callable[..., RegistryProcess]]:
    """``make_mirror(*args)``: a Hangar registry (SQLite, auth off unless ``args`` say) started with ``args``."""
    started: list[RegistryProcess] = []

    def make(*args: str) -> RegistryProcess:
        auth = () if "--auth" in args else ("--auth", "off")
        proc = RegistryProcess(tmp_path / f"mirror{len(started)}", "", *auth, *args)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


def push_blob(client: httpx.Client, repo: str, data: bytes) -> dict[str, object]:
    """POST then PUT: what every registry takes (the reference one has no one-request upload)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    url = f"{location}{'&' if '?' in location else '?'}digest={digest}"  # the upload's own query stays
    r = client.put(url, content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return {"digest": digest, "size": len(data)}


def push_plain_model(base_url: str, repo: str, tag: str, weights: bytes) -> tuple[bytes, dict[str, bytes]]:
    """An Ollama-shaped model pushed to any OCI registry without auth: (manifest, blobs by digest)."""
    config = b'{"model_format":"gguf","model_family":"llama","architecture":"amd64","os":"linux"}\n'
    template = b"{{ .Prompt }}"
    with httpx.Client(base_url=base_url, timeout=60) as c:
        descs = [push_blob(c, repo, data) for data in (config, weights, template)]
        raw = ollama_manifest(
            descs[0], [{"mediaType": mt.OLLAMA_MODEL, **descs[1]}, {"mediaType": mt.OLLAMA_TEMPLATE, **descs[2]}]
        )
        r = c.put(f"/v2/{repo}/manifests/{tag}", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
        assert r.status_code == 201, r.text
    blobs = {"sha256:" + hashlib.sha256(d).hexdigest(): d for d in (config, weights, template)}
    return raw, blobs


def blob_path(registry: RegistryProcess, digest: str) -> Path:
    hexdigest = digest.removeprefix("sha256:")
    return registry.data_dir / "blobs" / "sha256" / hexdigest[:2] / hexdigest
