"""Small HTTP servers run in a thread for the tests: an Ollama-style front that redirects blob
downloads to a "CDN" on another host name, and that CDN; a proxy that records what the registry
received (and may lie about its answers)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers import free_port

_BLOB_GET = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})$")
_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


class ThreadedServer:
    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def cdn_app(blob_dir: Path, seen: list[dict[str, str]]) -> Starlette:
    """Serves ``/cdn/<digest>`` from a Hangar registry's blob directory, recording request headers."""

    async def blob(request: Request) -> Response:
        seen.append(dict(request.headers))
        hexdigest = request.path_params["digest"].removeprefix("sha256:")
        return FileResponse(blob_dir / hexdigest[:2] / hexdigest)

    return Starlette(routes=[Route("/cdn/{digest}", blob)])


def slow_start_cdn_app(blob_dir: Path, served: list[tuple[int, int]], rate: int) -> Starlette:
    """Like ``cdn_app``, but a request for a range that starts at byte 0 trickles at ``rate``
    bytes/s (one slow connection among fast ones). Records ``(first byte, bytes sent)`` for each
    request once it ends, complete or cut off by the client."""
    piece = 16 * 1024

    async def blob(request: Request) -> Response:
        hexdigest = request.path_params["digest"].removeprefix("sha256:")
        data = (blob_dir / hexdigest[:2] / hexdigest).read_bytes()
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("range", ""))
        if m is None:
            return Response(status_code=416)
        first, last = int(m.group(1)), min(int(m.group(2)), len(data) - 1)

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            try:
                for pos in range(first, last + 1, piece):
                    if first == 0:
                        await asyncio.sleep(piece / rate)
                    chunk = data[pos : min(pos + piece, last + 1)]
                    yield chunk
                    sent += len(chunk)
            finally:
                served.append((first, sent))

        headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}", "Content-Length": str(last - first + 1)}
        return StreamingResponse(body(), status_code=206, headers=headers)

    return Starlette(routes=[Route("/cdn/{digest}", blob)])


def rangeless_cdn_app(blob_dir: Path) -> Starlette:
    """Like ``cdn_app``, but ignoring ``Range``: every GET answers 200 with the whole blob."""

    async def blob(request: Request) -> Response:
        hexdigest = request.path_params["digest"].removeprefix("sha256:")
        return Response((blob_dir / hexdigest[:2] / hexdigest).read_bytes(), media_type="application/octet-stream")

    return Starlette(routes=[Route("/cdn/{digest}", blob)])


def ollama_front_app(registry_url: str, cdn_url: str) -> Starlette:
    """Forwards everything to a registry (keeping the Host, so realms and Locations name the
    front), but answers authorised blob GETs with a 307 to the CDN, as ollama.com does, and has
    no chunksums endpoint."""
    client = httpx.AsyncClient(timeout=60)

    async def forward(request: Request) -> Response:
        path, query = request.url.path, request.url.query
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.headers["host"]
        if "/chunksums/" in path:
            return Response(status_code=404)
        m = _BLOB_GET.match(path)
        if request.method == "GET" and m:
            head = await client.head(registry_url + path, headers=headers)
            if head.status_code != 200:
                keep = {k: v for k, v in head.headers.items() if k.lower() == "www-authenticate"}
                return Response(status_code=head.status_code, headers=keep)
            return RedirectResponse(f"{cdn_url}/cdn/{m.group(1)}?signature=cdn", status_code=307)
        r = await client.request(
            request.method,
            registry_url + path + ("?" + query if query else ""),
            headers=headers,
            content=await request.body(),
        )
        return Response(
            r.content, status_code=r.status_code, headers={k: v for k, v in r.headers.items() if k.lower() not in _HOP}
        )

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


def digestless_front_app(registry_url: str, manifest_requests: list[str]) -> Starlette:
    """Forwards reads to a registry but leaves ``Docker-Content-Digest`` out of every answer, as
    some registries do; records the method of each manifest request."""
    client = httpx.AsyncClient(timeout=60)

    async def forward(request: Request) -> Response:
        if "/manifests/" in request.url.path:
            manifest_requests.append(request.method)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        r = await client.request(request.method, registry_url + request.url.path, headers=headers)
        dropped = _HOP | {"docker-content-digest"}
        return Response(r.content, status_code=r.status_code,
                        headers={k: v for k, v in r.headers.items() if k.lower() not in dropped})  # fmt: skip

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "HEAD"])])


def recording_front_app(
    registry_url: str,
    received: list[tuple[str, str, int]],
    rewrite: Callable[[Request, dict[str, str]], None] | None = None,
) -> Starlette:
    """Forwards everything to a registry as a plain reverse proxy (its own Host; the registry's
    URLs in ``Location`` headers rewritten to the front's), recording ``(method, path with query,
    request body bytes)`` of each request: what the registry received. ``rewrite(request,
    headers)`` may change an answer's headers (a lying registry)."""
    client = httpx.AsyncClient(timeout=60)

    async def forward(request: Request) -> Response:
        body = await request.body()
        query = request.url.query
        received.append((request.method, request.url.path + ("?" + query if query else ""), len(body)))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        url = registry_url + request.url.path + ("?" + query if query else "")
        r = await client.request(request.method, url, headers=headers, content=body)
        front = str(request.base_url).rstrip("/")
        out = {k: v for k, v in r.headers.items() if k.lower() not in _HOP}
        for key in ("location", "docker-upload-location"):
            if key in out:
                out[key] = out[key].replace(registry_url, front)
        if "www-authenticate" in out:
            out["www-authenticate"] = out["www-authenticate"].replace(registry_url, front)
        if rewrite is not None:
            rewrite(request, out)
        return Response(r.content, status_code=r.status_code, headers=out)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


def blob_bytes_received(received: list[tuple[str, str, int]]) -> int:
    """Request body bytes that went to blob uploads (POST, PATCH, PUT under ``/blobs/uploads``)."""
    return sum(n for method, path, n in received if "/blobs/uploads" in path and method in ("POST", "PATCH", "PUT"))
