"""``HEAD/POST /api/blobs/<digest>`` and ``POST /api/create`` (§8.6 of the protocol spec): clients
upload a Modelfile's files as blobs, then ask for a model made of them. The work is
``client.create``; this module checks the request and streams its progress.

As Ollama: an error found before any progress was reported is a plain HTTP error (400 for a bad
request, 500 for a failure doing the work), one found later the stream's last line; with
``stream: false`` the last object, an error answered with its status."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from client import errors as client_errors
from client.create import CreateError, CreateRequest, create, normalise_message, quantize_type
from client.progress import Progress
from formats.digest import Digest, InvalidDigest
from runtime.api.common import JSON_TYPE, error, field, handle_errors, progress_response, read_json, service
from runtime.service import ApiError

WRITE_BATCH = 4 * 1024 * 1024


def _digest(request: Request) -> Digest:
    try:
        return Digest.parse(request.path_params["digest"])
    except InvalidDigest:
        raise ApiError(400, "invalid digest format: expected sha256:<64 hex digits>") from None


@handle_errors
async def blob_head(request: Request) -> Response:
    digest = _digest(request)
    return Response(status_code=200 if service(request).store.has_blob(digest) else 404)


@handle_errors
async def blob_upload(request: Request) -> Response:
    """Stream the body into the store, verified against the digest in the path."""
    digest = _digest(request)
    store = service(request).store.ensure()
    if store.has_blob(digest):
        await _drain(request)
        return Response(status_code=200)  # already present (201 is for a blob this request made)
    h = hashlib.sha256()
    with store.temp_file() as (tmp, f):
        pending = bytearray()
        async for chunk in request.stream():
            h.update(chunk)
            pending += chunk
            if len(pending) >= WRITE_BATCH:
                await anyio.to_thread.run_sync(f.write, bytes(pending))
                pending.clear()
        await anyio.to_thread.run_sync(f.write, bytes(pending))
        actual = Digest(h.hexdigest())
        if actual != digest:
            return error(400, f"digest mismatch, expected {digest}, got {actual}")
        await anyio.to_thread.run_sync(_flush, f)
        store.publish_blob(tmp, digest)
    return Response(status_code=201)


def _flush(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


async def _drain(request: Request) -> None:
    async for _ in request.stream():
        pass


@handle_errors
async def create_model(request: Request) -> Response:
    svc = service(request)
    body = await read_json(request)
    create_request = _parse(body)
    stream = field(body, "stream", bool, True)
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def progress(event: Progress) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event.to_json())

    def work() -> None:
        try:
            create(svc.store, svc.client_settings, create_request, progress)
        except CreateError as e:
            loop.call_soon_threadsafe(queue.put_nowait, {"error": str(e), "status": e.status})
        except client_errors.InvalidName as e:
            loop.call_soon_threadsafe(queue.put_nowait, {"error": str(e), "status": 400})
        except (client_errors.HangarError, ValueError) as e:
            loop.call_soon_threadsafe(queue.put_nowait, {"error": str(e), "status": 500})
        except Exception as e:  # surfaced to the client rather than lost in a thread
            loop.call_soon_threadsafe(queue.put_nowait, {"error": f"create failed: {e}", "status": 500})
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    worker = asyncio.ensure_future(anyio.to_thread.run_sync(work))
    first = await queue.get()
    if first is not None and "error" in first:  # nothing was reported yet: a plain HTTP error
        await worker
        return error(first["status"], first["error"])

    async def items() -> AsyncIterator[dict[str, Any]]:
        item = first
        while item is not None:
            yield item
            item = await queue.get()
        await worker

    if stream:
        # An error after progress began is the stream's last line (its status is gone: 200 was sent).
        return await progress_response(
            ({"error": item["error"]} if "error" in item else item async for item in items()), True, 500
        )
    last: dict[str, Any] = {}
    async for item in items():
        last = item
    if "error" in last:
        return error(last["status"], last["error"])
    return JSONResponse(last, media_type=JSON_TYPE)


def _parse(body: dict[str, Any]) -> CreateRequest:
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model is required")
    base = field(body, "from", str)
    files = _file_map(body, "files")
    adapters = _file_map(body, "adapters")
    draft_files = _file_map(body, "draft_files")
    draft_quantize = field(body, "draft_quantize", str)
    if draft_quantize and not draft_files:
        raise ApiError(400, "--draft-quantize requires a DRAFT model")
    if draft_files:
        raise ApiError(400, "draft_files: draft models (DRAFT) are not supported yet")
    if field(body, "remote_host", str):
        raise ApiError(400, "remote_host: remote models are not supported")
    if not base and not files:
        raise ApiError(400, "neither 'from' or 'files' was specified")
    licenses = body.get("license")
    if isinstance(licenses, str):
        licenses = [licenses] if licenses else []  # Ollama skips an empty license string
    if licenses is not None and not (isinstance(licenses, list) and all(isinstance(x, str) for x in licenses)):
        raise ApiError(400, "license must be a string or an array of strings")
    parameters = field(body, "parameters", dict, {})
    messages = field(body, "messages", list, [])
    try:
        messages = [normalise_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    except CreateError as e:
        raise ApiError(400, str(e)) from None
    quantize = field(body, "quantize", str) or field(body, "quantization", str)
    try:
        if quantize:
            quantize_type(quantize)
    except CreateError as e:
        raise ApiError(400, str(e)) from None
    return CreateRequest(
        name=name,
        base=base,
        files=files,
        adapters=adapters,
        template=field(body, "template", str),
        system=field(body, "system", str),
        licenses=list(licenses or []),
        parameters=parameters,
        messages=messages,
        requires=field(body, "requires", str),
        renderer=field(body, "renderer", str),
        parser=field(body, "parser", str),
        quantize=quantize,
        insecure=bool(field(body, "insecure", bool, False)),
        info=_info(body),
    )


_INFO_STRINGS = ("model_family", "base_name", "quantization_level", "parameter_size")
_INFO_INTS = ("context_length", "embedding_length")


def _info(body: dict[str, Any]) -> dict[str, Any]:
    """Ollama's ``info`` overrides of the config, checked as its handler checks them."""
    raw = field(body, "info", dict, {}) or {}
    out: dict[str, Any] = {}
    capabilities = raw.get("capabilities")
    if capabilities is not None:
        if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
            raise ApiError(400, 'info field "capabilities" must be an array of strings')
        out["capabilities"] = list(capabilities)
    for key in _INFO_STRINGS:
        if key in raw:
            if not isinstance(raw[key], str):
                raise ApiError(400, f'info field "{key}" must be a string')
            out[key] = raw[key]
    for key in _INFO_INTS:
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ApiError(400, f'info field "{key}" must be a number')
            if value < 0 or int(value) != value or value > 2**63 - 1:
                raise ApiError(400, f'info field "{key}" must be a non-negative integer')
            out[key] = int(value)
    return out


def _file_map(body: dict[str, Any], key: str) -> dict[str, Digest]:
    raw = field(body, key, dict, {})
    out: dict[str, Digest] = {}
    for path, digest in raw.items():
        pure = PurePosixPath(path)
        if not path or pure.is_absolute() or ".." in pure.parts:
            raise ApiError(400, f"{key}: {path!r} must be a relative path without '..'")
        try:
            out[path] = Digest.parse(digest) if isinstance(digest, str) else Digest.parse("")
        except InvalidDigest:
            raise ApiError(400, f"{key}: {path!r} needs a digest such as sha256:<64 hex digits>") from None
    return out
