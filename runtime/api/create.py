"""``HEAD/POST /api/blobs/<digest>`` and ``POST /api/create`` (§8.6 of the protocol spec): clients
upload a Modelfile's files as blobs, then ask for a model made of them. The work is
``client.create``; this module checks the request and streams its progress."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from client import errors as client_errors
from client.create import CreateError, CreateRequest, create, quantize_type
from client.progress import Progress
from registry.oci.digest import Digest, InvalidDigest
from registry.oci.modelfile import ROLES
from runtime.api.common import error, field, handle_errors, progress_response, read_json, service
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
        return Response(status_code=201)
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
        except (CreateError, client_errors.HangarError, ValueError) as e:
            loop.call_soon_threadsafe(queue.put_nowait, {"error": str(e)})
        except Exception as e:  # surfaced to the client rather than lost in a thread
            loop.call_soon_threadsafe(queue.put_nowait, {"error": f"create failed: {e}"})
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    worker = asyncio.ensure_future(anyio.to_thread.run_sync(work))

    async def lines() -> AsyncIterator[dict[str, Any]]:
        while (item := await queue.get()) is not None:
            yield item
        await worker

    return await progress_response(lines(), stream, error_status=400)


def _parse(body: dict[str, Any]) -> CreateRequest:
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model is required")
    base = field(body, "from", str)
    files = _file_map(body, "files")
    adapters = _file_map(body, "adapters")
    if not base and not files:
        raise ApiError(400, "neither 'from' or 'files' was specified")
    licenses = body.get("license")
    if isinstance(licenses, str):
        licenses = [licenses]
    if licenses is not None and not (isinstance(licenses, list) and all(isinstance(x, str) for x in licenses)):
        raise ApiError(400, "license must be a string or an array of strings")
    parameters = field(body, "parameters", dict, {})
    messages = field(body, "messages", list, [])
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content", ""), str):
            raise ApiError(400, f"messages[{i}]: needs a role (system, user or assistant) and string content")
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
        messages=[{"role": m["role"], "content": m.get("content", "")} for m in messages],
        requires=field(body, "requires", str),
        renderer=field(body, "renderer", str),
        parser=field(body, "parser", str),
        quantize=quantize,
        insecure=bool(field(body, "insecure", bool, False)),
    )


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
