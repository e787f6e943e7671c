"""Helpers the API modules share: request bodies, Ollama-style errors, timestamps, progress answers
(streams themselves: ``runtime.api.stream``)."""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from formats.options import OptionError, parse_keep_alive, parse_options
from runtime.api.stream import ndjson
from runtime.scheduler import Busy
from runtime.service import ApiError, Service

JSON_TYPE = "application/json; charset=utf-8"


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status, media_type=JSON_TYPE)


def handle_errors(
    fn: Callable[[Request], Awaitable[Response]], render: Callable[[int, str], Response] = error
) -> Callable[[Request], Awaitable[Response]]:
    """Turn ApiError, option errors and a full queue into error answers: Ollama's ``{"error": …}``
    unless ``render`` writes another dialect's."""

    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as e:
            return render(e.status, e.message)
        except OptionError as e:
            return render(400, str(e))
        except Busy as e:
            return render(503, str(e))

    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


async def read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """A typed field; a wrong JSON type is a 400, as Go's decoder makes it."""
    value = body.get(name, default)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if int in kinds and float not in kinds and isinstance(value, float) and value.is_integer():
        return int(value)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise ApiError(400, f"json: cannot unmarshal {_json_type(value)} into field {name}")
    return value


def _json_type(value: Any) -> str:
    names = {str: "string", bool: "bool", int: "number", float: "number", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def options_of(body: dict[str, Any]) -> dict[str, Any]:
    options, _warnings = parse_options(field(body, "options", dict, {}))
    return options


def keep_alive_of(body: dict[str, Any]) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except OptionError as e:
        raise ApiError(400, str(e)) from None


def timestamp() -> str:
    """RFC 3339 with nanoseconds, as Go writes it (trailing zeros trimmed)."""
    ns = time.time_ns()
    seconds, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def iso(unix: float) -> str:
    seconds = int(unix)
    frac = f"{int((unix - seconds) * 1e9):09d}".rstrip("0")
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{local}.{frac}Z" if frac else f"{local}Z"


async def progress_response(lines: AsyncIterator[dict[str, Any]], stream: bool, error_status: int) -> Response:
    """Progress objects as NDJSON, or (``stream`` false) only the last one, answered with
    ``error_status`` when it is an error (pull, push, create)."""
    if stream:
        return ndjson(lines)  # runtime.api.stream: an exception still ends with an error line
    last: dict[str, Any] = {}
    async for item in lines:
        last = item
    return JSONResponse(last, status_code=error_status if "error" in last else 200, media_type=JSON_TYPE)


def with_call_ids(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls as both APIs answer them: an id ``call_<8 of [a-z0-9]>`` and an index each."""
    out = []
    for index, call in enumerate(calls):
        ident = "call_" + "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
        out.append({"id": ident, "function": {"index": index, **call["function"]}})
    return out
