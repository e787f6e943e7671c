"""Health and Prometheus metrics: ``/healthz``, ``/readyz`` and ``/metrics``.

``Metrics`` holds the app's own collectors (a registry per app: nothing global) and
``MetricsMiddleware`` feeds them from every request, labelled by the route's template
(``/v2/{name:repo}/blobs/{digest}``, never the raw path, so the label set stays bounded).

With ``PROMETHEUS_MULTIPROC_DIR`` set (``hangar registry serve`` sets it to a folder under the
data directory, emptied at each start), prometheus-client keeps each worker's values in files
there and a scrape of any worker adds up all of them."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.api import R

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Probes and scrapes: answered without a route label of their own in the access log.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
PROBE_TIMEOUT = 5.0

_BLOB_ROUTE = R + "/blobs/{digest}"
_UPLOADS_ROUTES = (R + "/blobs/uploads/", R + "/blobs/uploads")
_UPLOAD_ROUTE = R + "/blobs/uploads/{upload_id}"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hangar_registry_requests", "HTTP requests by method, route template and status",
            ("method", "route", "status"), registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "hangar_registry_request_duration_seconds", "Time to answer a request (to its last byte)",
            ("method", "route"), registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )  # fmt: skip
        self.bytes_sent = Counter("hangar_registry_blob_bytes_sent", "Blob bytes sent to clients", registry=r)
        self.bytes_received = Counter(
            "hangar_registry_blob_bytes_received", "Blob bytes received from clients (upload bodies)", registry=r
        )
        self.uploads_started = Counter("hangar_registry_upload_sessions_started", "Upload sessions started", registry=r)
        self.uploads_completed = Counter(
            "hangar_registry_upload_sessions_completed", "Upload sessions completed into a blob", registry=r
        )
        self.redirects = Counter(
            "hangar_registry_blob_redirects", "Blob GETs answered with 307 to the object store", registry=r
        )
        self.pool_checked_out = Gauge(
            "hangar_registry_db_pool_checked_out", "Database connections in use", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.pool_size = Gauge(
            "hangar_registry_db_pool_size", "Database connections the pool keeps", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip

    def observe_pool(self, engine: Engine) -> None:
        pool: Any = engine.pool
        if hasattr(pool, "checkedout") and hasattr(pool, "size"):
            self.pool_checked_out.set(pool.checkedout())
            self.pool_size.set(pool.size())

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request (outermost, so rate-limited and failed ones count too)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, engine: Engine) -> None:
        self.app = app
        self.metrics = metrics
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        sent = received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self._record(scope, status, sent, received, time.perf_counter() - start)

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    # Before the last byte leaves: a client that then scrapes sees its request.
                    record()
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            record()

    def _record(self, scope: Scope, status: int, sent: int, received: int, elapsed: float) -> None:
        m = self.metrics
        route = scope.get("route")
        template = getattr(route, "path", None) or "(unmatched)"
        method = scope["method"]
        m.requests.labels(method, template, str(status)).inc()
        m.duration.labels(method, template).observe(elapsed)
        if template == _BLOB_ROUTE and method == "GET":
            if status == 307:
                m.redirects.inc()
            elif status in (200, 206):
                m.bytes_sent.inc(sent)
        elif template in _UPLOADS_ROUTES and method == "POST":
            query = scope.get("query_string", b"")
            if status == 202:
                m.uploads_started.inc()
            elif status == 201 and b"digest=" in query and b"mount=" not in query:
                m.uploads_started.inc()  # a monolithic upload: a session of one request
                m.uploads_completed.inc()
            if status in (201, 202):
                m.bytes_received.inc(received)
        elif template == _UPLOAD_ROUTE and method in ("PATCH", "PUT") and status in (201, 202, 204):
            m.bytes_received.inc(received)
            if method == "PUT" and status == 201:
                m.uploads_completed.inc()
        m.observe_pool(self.engine)


async def healthz(request: Request) -> Response:
    """The process is up (touches nothing)."""
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """200 when the database answers ``SELECT 1`` and the blob store's probe passes; else 503
    with what failed."""
    engine: Engine = request.app.state.engine
    services = request.app.state.services
    failed: dict[str, str] = {}

    def query() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(asyncio.to_thread(query), PROBE_TIMEOUT)
    except Exception as e:
        failed["database"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    try:
        await asyncio.wait_for(services.store.ready(), PROBE_TIMEOUT)
    except Exception as e:
        failed["storage"] = str(e) or type(e).__name__
    if failed:
        return JSONResponse({"status": "unavailable", "failed": failed}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
