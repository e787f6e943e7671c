"""A small round-robin HTTP/1.1 load balancer for the tests, in front of registry replicas (or any
HTTP server, such as the object store, to record what reaches it).

Each request goes to the next live backend; the request line, every header (``Host`` and
``Authorization`` included) and the response's (``Location`` included) pass byte for byte, and
bodies stream both ways (``Content-Length``, chunked, or to the close), so a 2 GB upload never
sits in memory. A backend that refuses the connection is skipped for that request (as nginx's
``proxy_next_upstream error``). GETs and HEADs reuse kept-alive backend connections and go again
on a new one when such a connection turns out closed; any other request gets a connection of its
own and is never sent twice: a backend that dies under it costs the client a ``502`` or a cut
connection, whichever the moment allows, and the client's own retry goes on to the next.
``drop(backend)`` takes a backend out of the rotation (a load balancer's failed health check) and
``add`` puts it back. ``seen`` records each request: who served it, its method, target, headers,
status and response headers; ``bytes_up`` counts the request body bytes sent to each backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

# Longest request or status line, or header line, we accept (tokens and presigned URLs are long).
LINE_LIMIT = 1024 * 1024
COPY_CHUNK = 256 * 1024
# A backend connection kept alive after a GET or HEAD is reused for another GET or HEAD within
# this long (uvicorn closes idle ones after 5 s); other methods get a connection of their own, so
# that a request that may not be sent twice never meets one the backend has just closed.
KEEPALIVE_SECONDS = 2.0


class _Sink(Protocol):
    """Where a body is copied to: a stream writer, or one that counts."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class _BadMessage(Exception):
    """What came in is not HTTP/1.1 we can frame."""


@dataclass
class Seen:
    """One request that went through: which backend served it, and what the client sent."""

    backend: str
    method: str
    target: str
    headers: list[tuple[str, str]]
    status: int = 0  # 0: no response came back (the backend died first)
    response_headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    def response_header(self, name: str) -> str:
        return next((v for k, v in self.response_headers if k.lower() == name.lower()), "")


@dataclass
class _Head:
    first_line: bytes
    raw: bytes  # the whole head, as received
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name), "")


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    """A request's or response's head (up to the empty line); None at a clean end of stream."""
    first = await reader.readline()
    if not first:
        return None
    if not first.endswith(b"\n"):
        raise _BadMessage("message head cut short")
    raw = bytearray(first)
    headers = []
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise _BadMessage("message head cut short")
        raw += line
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise _BadMessage(f"not a header line: {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return _Head(first.rstrip(b"\r\n"), bytes(raw), headers)


async def _copy_body(head: _Head, reader: asyncio.StreamReader, writer: _Sink, *, to_eof: bool) -> int:
    """Copies one message's body as framed by its head (chunked framing passes verbatim);
    ``to_eof``: a response with neither framing runs to the close. Returns the bytes copied."""
    copied = 0
    if "chunked" in head.get("transfer-encoding").lower():
        while True:
            size_line = await reader.readline()
            if not size_line.endswith(b"\n"):
                raise _BadMessage("chunked body cut short")
            writer.write(size_line)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = await reader.readline()
                    if not line.endswith(b"\n"):
                        raise _BadMessage("chunked body cut short")
                    writer.write(line)
                    if line in (b"\r\n", b"\n"):
                        await writer.drain()
                        return copied
            copied += await _copy_exactly(reader, writer, size + 2)  # the chunk and its CRLF
    length = head.get("content-length")
    if length:
        return await _copy_exactly(reader, writer, int(length))
    if to_eof:
        while chunk := await reader.read(COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
            copied += len(chunk)
    return copied


async def _copy_exactly(reader: asyncio.StreamReader, writer: _Sink, n: int) -> int:
    left = n
    while left:
        chunk = await reader.read(min(COPY_CHUNK, left))
        if not chunk:
            raise _BadMessage(f"body cut short: {left} of {n} bytes missing")
        writer.write(chunk)
        await writer.drain()
        left -= len(chunk)
    return n


def _has_no_body(method: str, status: int) -> bool:
    return method == "HEAD" or status < 200 or status in (204, 304)


class RoundRobinProxy:
    """``RoundRobinProxy(["127.0.0.1:5001", "127.0.0.1:5002"]).start()``; ``url`` is where to
    send clients. Runs its own event loop in a thread, so blocking tests can use it."""

    def __init__(self, backends: Iterable[str]) -> None:
        self.backends = list(backends)
        if not self.backends:
            raise ValueError("a proxy needs at least one backend")
        self._live = list(self.backends)
        self._next = 0
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        # Request body bytes sent to each backend (what a test watches to time a kill).
        self.bytes_up: dict[str, int] = dict.fromkeys(self.backends, 0)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Backend connections kept alive, per backend: (reader, writer, idle since).
        self._idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]]] = {}

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> RoundRobinProxy:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, "127.0.0.1", 0, limit=LINE_LIMIT)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # the caller hears of it, not a thread's stderr
                failure.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="roundrobin-proxy", daemon=True)
        self._thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for idle in self._idle.values():
                for _, writer, _ in idle:
                    writer.close()
            loop.stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
        self._thread.join(10)
        self._loop = self._thread = None

    def drop(self, backend: str) -> None:
        """Takes ``backend`` out of the rotation (requests in flight there go on)."""
        with self._lock:
            if backend in self._live:
                self._live.remove(backend)

    def add(self, backend: str) -> None:
        with self._lock:
            if backend not in self.backends:
                self.backends.append(backend)
                self.bytes_up[backend] = 0
            if backend not in self._live:
                self._live.append(backend)

    def served_by(self, method: str, path_contains: str = "") -> list[str]:
        """The backends that answered matching requests, in order."""
        return [s.backend for s in self.seen if s.method == method and path_contains in s.target and s.status]

    def _rotation(self) -> list[str]:
        """Every live backend once, starting with the next in turn."""
        with self._lock:
            live = list(self._live)
            start = self._next
            self._next += 1
        return [live[(start + i) % len(live)] for i in range(len(live))]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one_exchange(reader, writer):
                pass
        except (_BadMessage, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the client's connection ends; the client sees it cut
        except asyncio.CancelledError:
            pass  # stop(): the connection ends with the proxy
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _one_exchange(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> bool:
        """One request and its response; False when the client's connection must end."""
        request = await _read_head(client_r)
        if request is None:
            return False
        parts = request.first_line.decode("latin-1").split(" ")
        if len(parts) != 3:
            raise _BadMessage(f"bad request line {request.first_line[:80]!r}")
        method, target = parts[0], parts[1]
        rotation = self._rotation()
        if not rotation:
            await self._answer_502(client_w, "no backend left")
            return False
        reusable = method in ("GET", "HEAD")
        has_body = bool(request.get("content-length") or request.get("transfer-encoding"))
        while True:
            connection = await self._connect(rotation, reusable)
            if connection is None:
                await self._answer_502(client_w, "every backend refused the connection")
                return False
            backend, backend_r, backend_w, pooled = connection
            seen = Seen(backend, method, target, request.headers)
            self.seen.append(seen)
            backend_w.write(request.raw)

            async def pump_request(backend: str = backend, backend_w: asyncio.StreamWriter = backend_w) -> None:
                # Counted as it goes, so a test sees an upload's progress per backend.
                counting = _CountingWriter(backend_w, lambda n: self._count(backend, n))
                try:
                    await _copy_body(request, client_r, counting, to_eof=False)
                except BaseException:
                    backend_w.close()  # the client's body was cut: the backend must not wait for it
                    raise

            # A request without a body needs no pump (most GETs: no task per request).
            pump = asyncio.create_task(pump_request()) if has_body else None
            try:
                response = await _read_head(backend_r)
                # 1xx interim responses (100 Continue) pass through; the final one follows.
                while response is not None and _status(response) < 200:
                    client_w.write(response.raw)
                    await client_w.drain()
                    response = await _read_head(backend_r)
                if response is None:
                    raise _BadMessage("the backend closed without an answer")
                break
            except (_BadMessage, ConnectionError, OSError) as e:
                if pump is not None:
                    pump.cancel()
                    await asyncio.gather(pump, return_exceptions=True)
                backend_w.close()
                if pooled and not has_body:
                    # A kept-alive connection the backend had closed meanwhile (or a backend
                    # that died under it): a GET or HEAD goes again on a new one, as curl and
                    # browsers do.
                    self.seen.remove(seen)
                    continue
                await self._answer_502(client_w, f"backend {backend} failed: {e}")
                return False
        status = _status(response)
        seen.status, seen.response_headers = status, response.headers
        client_w.write(response.raw)
        body_ok = True
        try:
            if not _has_no_body(method, status):
                await _copy_body(response, backend_r, client_w, to_eof=True)
            await client_w.drain()
        except (_BadMessage, ConnectionError, OSError):
            body_ok = False  # the response was cut: so is the client's connection
        if pump is not None and not pump.done():
            # The backend answered before reading the whole request (an early 401, a 413):
            # the rest of the request body has nowhere to go, so the connection ends.
            backend_w.close()
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            return False
        keep = response.get("connection").lower() != "close" and request.get("connection").lower() != "close"
        framed = bool(response.get("content-length") or "chunked" in response.get("transfer-encoding").lower())
        sent = pump is None or pump.exception() is None
        complete = body_ok and sent and keep and (framed or _has_no_body(method, status))
        if complete and reusable:
            self._idle.setdefault(backend, []).append((backend_r, backend_w, time.monotonic()))
        else:
            backend_w.close()
        return complete

    async def _connect(
        self, rotation: list[str], reusable: bool
    ) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter, bool] | None:
        """A connection to the first backend in ``rotation`` that takes one: a kept-alive one
        for a GET or HEAD (``True`` last), else a new one; None when every backend refuses."""
        for backend in rotation:
            idle = self._idle.get(backend, [])
            while reusable and idle:
                reader, writer, since = idle.pop()
                if time.monotonic() - since < KEEPALIVE_SECONDS and not reader.at_eof() and not writer.is_closing():
                    return backend, reader, writer, True
                writer.close()
            host, port = backend.rsplit(":", 1)
            try:
                reader, writer = await asyncio.open_connection(host, int(port), limit=LINE_LIMIT)
            except OSError:
                continue  # refused: nothing was sent there, so the next one may have it
            return backend, reader, writer, False
        return None

    def _count(self, backend: str, n: int) -> None:
        self.bytes_up[backend] = self.bytes_up.get(backend, 0) + n

    @staticmethod
    async def _answer_502(writer: asyncio.StreamWriter, why: str) -> None:
        body = why.encode()
        writer.write(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()


def _status(head: _Head) -> int:
    try:
        return int(head.first_line.split(b" ")[1])
    except (IndexError, ValueError):
        raise _BadMessage(f"bad status line {head.first_line[:80]!r}") from None


class _CountingWriter:
    """A stream writer that reports how many bytes go through it."""

    def __init__(self, writer: asyncio.StreamWriter, count: Callable[[int], None]) -> None:
        self._writer = writer
        self._count = count

    def write(self, data: bytes) -> None:
        self._writer.write(data)
        self._count(len(data))

    async def drain(self) -> None:
        await self._writer.drain()
