"""``create_app(settings)``: the registry as an ASGI application.

The app owns its engine and blob store (made here, disposed in the lifespan); nothing is global.
The schema is not created here: ``hangar registry serve`` migrates before starting workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from formats.errorcodes import DistributionError
from registry import config
from registry.accounts import Accounts
from registry.api import routes
from registry.api.common import API_VERSION_HEADER, Services, audit, remote
from registry.api.uploads import progress_headers
from registry.auth import Authority
from registry.db import make_engine
from registry.db import unavailable as database_unavailable
from registry.gc import purge_uploads_forever, take_turns
from registry.meta import Metadata
from registry.metrics import Metrics, MetricsMiddleware, healthz, metrics_endpoint, readyz
from registry.mirror.service import make_mirror
from registry.pulls import flush_pulls_forever
from registry.ratelimit import RateLimiter
from registry.signing import UrlSigner
from registry.space import disk_full, insufficient_storage
from registry.storage import (
    BlobNotFound,
    DigestMismatch,
    EtagMismatch,
    IncompleteChunk,
    OffsetMismatch,
    OversizedChunk,
    SizeMismatch,
    StorageError,
    UploadModeConflict,
    UploadNotFound,
    open_store,
)
from registry.web.catalog import backfill
from registry.web.pages import web_app

log = logging.getLogger("hangar.registry")

_VERSION_HEADER = (API_VERSION_HEADER[0].lower().encode(), API_VERSION_HEADER[1].encode())
# Every answer a browser might be pointed at: never sniffed into HTML, never framed; and where the
# answer sets no policy of its own (the web site's pages do), nothing in it runs (a blob or an
# error body opened in a tab stays inert data).
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_INERT_POLICY = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; sandbox")


class ApiVersionHeader:
    """Adds ``Docker-Distribution-Api-Version: registry/2.0`` and the browser safety headers
    (``X-Content-Type-Options: nosniff``, an inert Content-Security-Policy where the response has
    none) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), _VERSION_HEADER]
                names = {name.lower() for name, _ in headers}
                headers += [h for h in (_NOSNIFF, _INERT_POLICY) if h[0] not in names]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_header)


class RateLimit:
    """At most ``--rate-limit`` requests a minute per client address to ``/token`` and
    ``/hangar/v1`` (the endpoints that check signatures and write nonces, codes and accounts);
    over it, 429 with ``Retry-After``. Blob and manifest traffic is not limited."""

    def __init__(self, app: ASGIApp, per_minute: int) -> None:
        self.app = app
        self.limiter = RateLimiter(per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not self.limiter.enabled or not (path == "/token" or path.startswith("/hangar/v1/")):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        wait = self.limiter.take(remote(request))
        if wait == 0:
            await self.app(scope, receive, send)
            return
        await audit(request, "unknown", "ratelimit", path, "denied", reason="too many requests")
        message = "too many requests from this address; retry later"
        headers = {"Retry-After": RateLimiter.retry_after(wait)}
        if path == "/token":
            response = _error_response(DistributionError("TOOMANYREQUESTS", message, headers=headers), request)
        else:
            response = JSONResponse({"error": message}, status_code=429, headers=headers)
        await response(scope, receive, send)


def _error_response(error: DistributionError, request: Request) -> Response:
    headers = dict(error.headers)
    headers["Content-Type"] = "application/json"
    body = b"" if request.method == "HEAD" else error.body()
    return Response(body, status_code=error.status, headers=headers)


async def _registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DistributionError)
    return _error_response(exc, request)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "UNSUPPORTED", 405: "UNSUPPORTED"}.get(exc.status_code, "UNKNOWN")
    return _error_response(DistributionError(code, exc.detail, status=exc.status_code), request)


def storage_error(request: Request, exc: Exception) -> DistributionError:
    """The one mapping of the blob store's errors (and a body cut short) to OCI errors."""
    upload_id = request.path_params.get("upload_id", "")
    if isinstance(exc, OffsetMismatch):
        headers = progress_headers(request, request.path_params.get("name", ""), upload_id, exc.expected)
        del headers["Content-Length"]
        detail = {"expected": exc.expected, "got": exc.got}
        return DistributionError("RANGE_INVALID", str(exc), detail=detail, headers=headers)
    if isinstance(exc, (DigestMismatch, SizeMismatch, EtagMismatch)):
        return DistributionError("DIGEST_INVALID", str(exc), detail={"digest": str(exc.expected)})
    if isinstance(exc, UploadNotFound):
        return DistributionError("BLOB_UPLOAD_UNKNOWN", detail={"upload": upload_id})
    if isinstance(exc, BlobNotFound):
        return DistributionError("BLOB_UNKNOWN", detail={"digest": request.path_params.get("digest", "")})
    if isinstance(exc, OversizedChunk):
        return DistributionError("SIZE_INVALID", str(exc))
    if isinstance(exc, (IncompleteChunk, ClientDisconnect)):
        return DistributionError("BLOB_UPLOAD_INVALID", f"incomplete chunk: {exc}")
    if isinstance(exc, UploadModeConflict):
        return DistributionError("BLOB_UPLOAD_INVALID", str(exc))
    # StorageUnavailable and anything a backend did not expect: the operator's problem, not the
    # client's; the log says what it was.
    log.error("blob store error on %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
    return DistributionError("UNAVAILABLE", "the blob store is unavailable; retry later")


async def _storage_error(request: Request, exc: Exception) -> Response:
    return _error_response(storage_error(request, exc), request)


async def _database_error(request: Request, exc: Exception) -> Response:
    # Handled here, not by the catch-all: Starlette re-raises what reaches that one, and uvicorn
    # then drops the client's kept-alive connection.
    if disk_full(exc) is not None or not database_unavailable(exc):  # SQLite's "disk is full" is a 507
        return await _unexpected_error(request, exc)
    log.error("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    message = "the database is unavailable; retry later"  # 503, not 500: nothing is wrong with the request
    return _error_response(DistributionError("UNAVAILABLE", message, headers={"Retry-After": "5"}), request)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    if (full := disk_full(exc)) is not None:  # 507, not 500: the operator frees space, the client retries
        log.error("out of space on %s %s: %s", request.method, request.url.path, full)
        return _error_response(insufficient_storage(full), request)
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(DistributionError("UNKNOWN", "internal server error"), request)


def create_app(settings: config.Settings) -> Starlette:
    engine = make_engine(settings.resolved_database_url)
    meta = Metadata(engine)
    accounts = Accounts(engine)
    store = open_store(settings.storage_location, settings.resolved_data_dir)
    take_turns(store, meta)  # publishes take turns with gc on each blob (registry.gc)
    site = web_app()  # the web site, mounted after every API route with its own error pages

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        signer = UrlSigner(meta.secret("blob-url"))
        authority = Authority(accounts, meta, meta.secret("token-signing"), settings.token_ttl)
        app.state.services = Services(settings, meta, accounts, authority, store, signer)
        site.state.services = app.state.services
        app.state.mirror = make_mirror(settings, meta, store, engine)  # None without --upstream
        site.state.mirror = app.state.mirror  # a cached model's page names its upstream
        if app.state.mirror is not None:
            authority.mirrored = app.state.mirror.serves
        if settings.auth == "off":
            log.warning("authentication is off: anyone who can reach this registry may push to it")
        purger = asyncio.create_task(purge_uploads_forever(meta, accounts, store, settings.upload_max_age))
        pull_counts = asyncio.create_task(flush_pulls_forever(meta, app.state.services.pulls))
        facts = asyncio.create_task(backfill(meta, store))  # the web site's summaries of older pushes
        try:
            yield
        finally:
            purger.cancel()
            pull_counts.cancel()  # writes what it counted since its last flush
            facts.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            with contextlib.suppress(asyncio.CancelledError):
                await pull_counts
            with contextlib.suppress(asyncio.CancelledError):
                await facts
            if app.state.mirror is not None:
                await app.state.mirror.aclose()
            engine.dispose()

    # Health and metrics: no authentication, no rate limit (registry.metrics).
    probes = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
    metrics = Metrics() if settings.metrics == "on" else None
    middleware = [Middleware(ApiVersionHeader), Middleware(RateLimit, per_minute=settings.rate_limit)]
    if metrics is not None:
        probes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
        middleware.insert(0, Middleware(MetricsMiddleware, metrics=metrics, engine=engine))
    app = Starlette(
        routes=[*probes, *routes, Mount("/", app=site)],
        middleware=middleware,
        exception_handlers={
            DistributionError: _registry_error,
            HTTPException: _http_error,
            StorageError: _storage_error,
            ClientDisconnect: _storage_error,
            DBAPIError: _database_error,
            # Through the handlers Starlette returns from (a disk that filled up is a 507): the
            # catch-all below re-raises, and uvicorn then drops the kept-alive connection.
            OSError: _unexpected_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.metrics = metrics
    return app


def app_from_env() -> Starlette:
    """The factory uvicorn workers call: settings come from HANGAR_REGISTRY_* variables."""
    return create_app(config.from_env())
