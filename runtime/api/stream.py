"""Streamed answers, once for both APIs: NDJSON lines (Ollama) and server-sent events (OpenAI).

The rules (§8.1 of shared/spec/ollama-protocol.md), kept here so that no handler re-implements
them:

- **First item first.** :func:`begin` awaits a generation's first item before any response is
  written, so a failure up to there (loading the model, a prompt too long for the context, a bad
  image) is a plain HTTP error status.
- **Errors after that** end the stream with an error in the stream's own dialect: a last NDJSON
  line ``{"error": "…"}`` (Ollama), or a ``data: {"error": {"message": …, "type": …}}`` event
  and no ``[DONE]`` (OpenAI's shape, which its SDKs raise as an ``APIError``). The status is
  already 200; nothing is logged as unhandled.
- **A client that goes away** stops the generation at its next token: the request is polled, the
  generation's ``cancel`` flag set, and the generation (``source``) closed when the stream ends,
  however it ends (a failed write included)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse

from runtime.service import ApiError, Result, collect

T = TypeVar("T")
NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"
DISCONNECT_POLL = 0.2  # seconds between checks that the client is still there

log = logging.getLogger("hangar.runtime")


class Started(Generic[T]):
    """A generation whose first item has arrived: iterate it for all its items; ``aclose``
    closes the generation even if it was never iterated (a client gone before the first write)."""

    def __init__(self, first: list[T], rest: AsyncGenerator[T, None]) -> None:
        self._first = first
        self._rest = rest

    async def __aiter__(self) -> AsyncIterator[T]:
        while self._first:
            yield self._first.pop(0)
        async for item in self._rest:
            yield item

    async def aclose(self) -> None:
        await self._rest.aclose()


async def whole(request: Request, start: Callable[..., AsyncGenerator[Any, None]]) -> Result:
    """The answer not streamed: the generation ``start(cancel=…)`` makes, collected; cancelled
    when the client goes away meanwhile."""
    async with cancelled_on_disconnect(request) as cancel:
        return await collect(start(cancel=cancel))


async def streamed(start: Callable[..., AsyncGenerator[T, None]]) -> tuple[Started[T], threading.Event]:
    """The answer streamed: the generation ``start(cancel=…)`` makes, its first item awaited
    (:func:`begin`), and its cancel flag (for :func:`ndjson` or :func:`sse`)."""
    cancel = threading.Event()
    return await begin(start(cancel=cancel)), cancel


@contextlib.asynccontextmanager
async def cancelled_on_disconnect(request: Request) -> AsyncIterator[threading.Event]:
    """A cancel flag that is set when the client goes away (for answers not streamed)."""
    cancel = threading.Event()
    watcher = asyncio.create_task(_wait_disconnect(request, cancel))
    try:
        yield cancel
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def begin(items: AsyncGenerator[T, None]) -> Started[T]:
    """``items`` with its first item already awaited: call before answering, so that an error
    up to the first item raises here (and becomes an HTTP error status)."""
    try:
        first = [await anext(items)]
    except StopAsyncIteration:
        first = []
    except BaseException:
        await items.aclose()
        raise
    return Started(first, items)


def ndjson(
    lines: AsyncIterator[dict[str, Any]],
    request: Request | None = None,
    source: Started[Any] | None = None,
    cancel: threading.Event | None = None,
) -> StreamingResponse:
    """``lines`` as NDJSON, a last ``{"error": …}`` line if they fail."""

    def encode(obj: dict[str, Any]) -> bytes:
        return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()

    def failed(status: int, message: str) -> bytes:
        return encode({"error": message})

    return StreamingResponse(_body(lines, encode, failed, request, source, cancel), media_type=NDJSON_TYPE)


def sse(
    events: AsyncIterator[dict[str, Any]],
    error_body: Callable[[int, str], dict[str, Any]],
    request: Request | None = None,
    source: Started[Any] | None = None,
    cancel: threading.Event | None = None,
) -> StreamingResponse:
    """``events`` as server-sent events ending with ``data: [DONE]``; if they fail, a last
    ``data: <error_body>`` event instead of ``[DONE]``."""

    def encode(obj: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    def failed(status: int, message: str) -> bytes:
        return encode(error_body(status, message))

    async def body() -> AsyncIterator[bytes]:
        failures: list[bool] = []
        async for chunk in _body(events, encode, failed, request, source, cancel, failures):
            yield chunk
        if not failures:
            yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type=SSE_TYPE)


async def _body(
    objects: AsyncIterator[dict[str, Any]],
    encode: Callable[[dict[str, Any]], bytes],
    failed: Callable[[int, str], bytes],
    request: Request | None,
    source: Started[Any] | None,
    cancel: threading.Event | None,
    failures: list[bool] | None = None,
) -> AsyncIterator[bytes]:
    """Encode ``objects``; on an error, the error's encoding. When the client goes away,
    ``cancel`` is set; ``source`` (the generation ``objects`` are made from) is closed at the end."""
    watcher = asyncio.create_task(_wait_disconnect(request, cancel)) if request is not None else None
    try:
        async for obj in objects:
            if watcher is not None and watcher.done():
                return  # nobody is reading
            yield encode(obj)
    except ApiError as e:
        if failures is not None:
            failures.append(True)
        yield failed(e.status, e.message)
    except Exception as e:  # a bug: say so in the stream, with the traceback in the log
        log.error("error while streaming an answer", exc_info=e)
        if failures is not None:
            failures.append(True)
        yield failed(500, f"internal error: {e}")
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if source is not None:
            await source.aclose()  # stops the engine at its next token


async def _wait_disconnect(request: Request, cancel: threading.Event | None) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL)
    if cancel is not None:
        cancel.set()
