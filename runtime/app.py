"""``create_app(settings)``: the local runtime (``hangar serve``) as an ASGI application.

Middleware, outermost first: the request guard (:class:`Guard`: the DNS-rebinding check on
``Host``, the cross-site check on ``Origin`` and the JSON-only rule for requests that change
something), CORS (Ollama's default origins plus ``HANGAR_ORIGINS``), and the optional API key
(``HANGAR_API_KEY``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import socket
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from client.config import ClientSettings
from client.config import load as load_client
from client.store import SETTLE_AFTER
from client.store_ops import settle_store
from runtime.api import routes
from runtime.config import RuntimeSettings
from runtime.config import load as load_runtime
from runtime.scheduler import Scheduler
from runtime.service import Service

DEFAULT_ORIGINS = [
    r"https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?",
    r"app://.*",
    r"file://.*",
    r"tauri://.*",
    r"vscode-webview://.*",
    r"vscode-file://.*",
]


def origin_regex(extra: tuple[str, ...]) -> str:
    patterns = list(DEFAULT_ORIGINS)
    for origin in extra:
        patterns.append(".*" if origin == "*" else re.escape(origin).replace(r"\*", ".*"))
    return "^(" + "|".join(patterns) + ")$"


def allowed_host(host_header: str) -> bool:
    """Whether a Host header may reach a loopback listener (the DNS-rebinding guard)."""
    host = host_header.rsplit(":", 1)[0] if not host_header.startswith("[") else host_header[1:].split("]")[0]
    host = host.strip().lower()
    if host in ("", "localhost", socket.gethostname().lower()) or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified


# Request bodies a state-changing request may carry. Every route reads JSON (blob uploads read
# bytes), so a type a browser can send without a CORS preflight (text/plain, a form) is refused:
# a web page cannot make the daemon pull, copy or push by posting a "simple" request.
JSON_TYPES = frozenset({"application/json"})
BLOB_TYPES = frozenset({"application/octet-stream"})
# Without an Origin header the request does not come from a web page (browsers send Origin on
# every POST and DELETE). ``curl -d`` sends form-urlencoded and some clients no type at all; a
# browser form cannot spell a JSON object in form-urlencoded, and the body is parsed as JSON.
NON_BROWSER_TYPES = frozenset({"", "application/x-www-form-urlencoded"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Guard:
    """The one gate in front of every route: 403 for a foreign ``Host`` on a loopback listener
    (DNS rebinding) and for any ``Origin`` not allowed (Ollama's defaults plus ``HANGAR_ORIGINS``,
    whatever the method or type: a cross-site page gets nothing done), 415 for a state-changing
    request whose body is not JSON."""

    def __init__(self, app: ASGIApp, settings: RuntimeSettings) -> None:
        self.app = app
        self.settings = settings
        self.origins = re.compile(origin_regex(settings.origins))
        try:
            self.loopback = ipaddress.ip_address(settings.host).is_loopback
        except ValueError:
            self.loopback = settings.host == "localhost"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_safety_headers(send)
        host = ""
        origins: list[str] = []
        content_types: list[str] = []
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            if name == "host":
                host = v.decode("latin-1")
            elif name == "origin":
                origins.append(v.decode("latin-1").strip())
            elif name == "content-type":
                content_types.append(v.decode("latin-1"))
        if self.loopback and not allowed_host(host):
            await _reply(scope, receive, send, 403, "forbidden: this host name may not reach the server")
            return
        refused = [o for o in origins if not self.origins.fullmatch(o)]
        if refused:
            await _reply(
                scope, receive, send, 403, f"forbidden: origin {refused[0]!r} is not allowed (see HANGAR_ORIGINS)"
            )
            return
        if scope["method"] not in SAFE_METHODS:
            kinds = {t.split(";", 1)[0].strip().lower() for t in content_types} or {""}
            allowed = JSON_TYPES | (BLOB_TYPES if scope["path"].startswith("/api/blobs/") else frozenset())
            if not origins:
                allowed |= NON_BROWSER_TYPES
            if len(kinds) != 1 or not kinds <= allowed:
                cors = {"access-control-allow-origin": origins[0]} if origins else {}
                message = f"unsupported content type {content_types[0] if content_types else '(none)'!r}: send JSON"
                await _reply(scope, receive, send, 415, message, cors)
                return
        if scope["method"] == "OPTIONS":
            # As Ollama: every OPTIONS that passes the guard is 204, a CORS preflight with the
            # headers the CORS middleware wrote, any other without a body.
            await self.app(scope, receive, _no_content(send))
            return
        await self.app(scope, receive, send)


# Every answer, should a browser be pointed at one: never sniffed into HTML, never framed, nothing
# in it runs (the API serves data only; a model's text opened in a tab stays text).
SAFETY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; sandbox"),
]


def _with_safety_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            extra = [h for h in SAFETY_HEADERS if h[0] not in names]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


def _no_content(send: Send) -> Send:
    """``send`` for an answer turned into 204 No Content: same headers less the body's."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            body_headers = (b"content-length", b"content-type")
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in body_headers]
            await send({**message, "status": 204, "headers": headers})
        elif message["type"] == "http.response.body":
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send(message)

    return wrapped


class ApiKey:
    """401 without the API key when one is set (inside CORS, so a browser app can read why)."""

    def __init__(self, app: ASGIApp, settings: RuntimeSettings) -> None:
        self.app = app
        self.key = settings.api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.key:
            await self.app(scope, receive, send)
            return
        open_path = (scope["path"] == "/" and scope["method"] in ("GET", "HEAD")) or scope["method"] == "OPTIONS"
        authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"authorization"), "")
        if not open_path and authorization != f"Bearer {self.key}":
            await _reply(scope, receive, send, 401, "unauthorized: set Authorization: Bearer <HANGAR_API_KEY>")
            return
        await self.app(scope, receive, send)


async def _reply(
    scope: Scope, receive: Receive, send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail or "error"}, status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    import logging

    logging.getLogger("hangar.runtime").error(
        "unhandled error on %s %s", request.method, request.url.path, exc_info=exc
    )
    return Response(json.dumps({"error": f"internal error: {exc}"}), status_code=500, media_type="application/json")


SETTLE_EVERY = SETTLE_AFTER  # seconds between settling the store's deferred flushes


def create_app(
    settings: RuntimeSettings | None = None,
    client_settings: ClientSettings | None = None,
    scheduler: Scheduler | None = None,
) -> Starlette:
    settings = settings or load_runtime()
    client_settings = client_settings or load_client()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sched = scheduler or Scheduler(settings)
        service = app.state.service = Service(settings, client_settings, sched)
        say = logging.getLogger("hangar.runtime").warning
        # Blobs pulled just before a crash of the machine are checked before any is loaded.
        await anyio.to_thread.run_sync(settle_store, service.store, say)

        async def settle_periodically() -> None:
            # Flushes what pulls deferred once the kernel has written it back, so that a reboot
            # finds few markers to re-verify.
            while True:
                await asyncio.sleep(SETTLE_EVERY)
                try:
                    await anyio.to_thread.run_sync(settle_store, service.store, say)
                except OSError as e:  # a full or failing disk: say so, try again later
                    say(f"could not settle the model store: {e}")

        settler = asyncio.create_task(settle_periodically())
        try:
            yield
        finally:
            settler.cancel()
            await sched.close()

    return Starlette(
        routes=routes,
        middleware=[
            Middleware(Guard, settings=settings),
            Middleware(
                CORSMiddleware,
                allow_origin_regex=origin_regex(settings.origins),
                allow_methods=["*"],
                allow_headers=["*"],
                allow_credentials=False,
            ),
            Middleware(ApiKey, settings=settings),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    return create_app()
