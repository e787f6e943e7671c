"""Ollama's API: ``/api/*`` and ``/`` (§8 of shared/spec/ollama-protocol.md).

Each handler validates the JSON, calls ``runtime.service``, and writes Ollama's shapes: NDJSON
streams by default, one object with ``"stream": false``, durations in nanoseconds, errors as
``{"error": "…"}``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from client import errors as client_errors
from client.model_info import render_modelfile
from client.progress import Progress
from client.store_ops import copy_model, remove_models
from formats.description import parameter_lines
from formats.names import ModelName, NameParseError
from runtime.api.common import (
    error,
    field,
    handle_errors,
    iso,
    keep_alive_of,
    options_of,
    progress_response,
    read_json,
    service,
    timestamp,
    with_call_ids,
)
from runtime.api.stream import ndjson, streamed, whole
from runtime.prompts import Message
from runtime.service import (
    ApiError,
    Piece,
    Resolved,
    Result,
    check_images,
    grammar_for,
    images_of,
    normalize,
    with_image_markers,
)

VERSION = "0.33.0"  # the Ollama API level this runtime speaks (clients check it)
ROLES = ("system", "user", "assistant", "tool")


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def version(request: Request) -> Response:
    return JSONResponse({"version": VERSION})


async def status(request: Request) -> Response:
    """Ollama's cloud switch (§8.2). Hangar has no cloud models: always off, by nothing's choice."""
    return JSONResponse({"cloud": {"disabled": True, "source": "none"}})


def _durations(result: Result) -> dict[str, Any]:
    done = result.done
    values = {
        "total_duration": result.total_ns,
        "load_duration": result.load_ns,
        "prompt_eval_count": done.evaluated_tokens if done else 0,
        "prompt_eval_duration": done.prompt_ns if done else 0,
        "eval_count": done.eval_tokens if done else 0,
        "eval_duration": done.eval_ns if done else 0,
    }
    return {k: v for k, v in values.items() if v}


def _done_reason(result: Result) -> str:
    reason = result.done.reason if result.done else "stop"
    return "stop" if reason == "cancel" else reason


def _fit_fields(body: dict[str, Any]) -> dict[str, bool]:
    """``truncate`` and ``shift`` (§8.3), both true unless the request says false."""
    return {"truncate": field(body, "truncate", bool, True), "shift": field(body, "shift", bool, True)}


def _logprob_fields(body: dict[str, Any]) -> tuple[bool, int]:
    logprobs = bool(field(body, "logprobs", bool, False))
    top = int(field(body, "top_logprobs", int, 0))
    if not 0 <= top <= 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")
    return logprobs or top > 0, top


def _images(body: dict[str, Any], resolved: Resolved, where: str = "images") -> list[str]:
    images: list[str] = field(body, where, list, [])
    for image in images:
        if not isinstance(image, str):
            raise ApiError(400, "images must be base64 strings")
        try:
            base64.b64decode(image, validate=True)
        except ValueError:
            raise ApiError(400, "invalid image data: not base64") from None
    check_images(resolved, bool(images))
    return images


# -- generate ---------------------------------------------------------------------------------------


@handle_errors
async def generate(request: Request) -> Response:
    svc = service(request)
    body = await read_json(request)
    resolved = await svc.resolve(body.get("model") or body.get("name"))
    prompt = field(body, "prompt", str, "")
    suffix = field(body, "suffix", str, "")
    system = field(body, "system", str)
    template = field(body, "template", str)
    context = field(body, "context", list)
    raw = field(body, "raw", bool, False)
    stream = field(body, "stream", bool, True)
    fit = _fit_fields(body)
    if raw and (template is not None or system is not None or context):
        raise ApiError(400, "raw mode does not support template, system, or context")
    if context is not None and not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        raise ApiError(400, "context must be an array of integers")
    if "completion" not in resolved.info.capabilities:
        raise ApiError(400, f'"{resolved.requested}" does not support generate')
    if suffix and "insert" not in resolved.info.capabilities:
        raise ApiError(400, f'"{resolved.requested}" does not support insert')
    think = svc.think(resolved, body.get("think"))  # formats.thinking: on by default for a thinking model
    images = [base64.b64decode(image) for image in _images(body, resolved)]
    logprobs, top_logprobs = _logprob_fields(body)
    grammar = grammar_for(body.get("format"))
    options = svc.options(resolved, options_of(body))
    keep_alive = keep_alive_of(body)
    model = body.get("model") or body.get("name")

    if not prompt and not suffix:
        reason = await svc.load_only(resolved, options, keep_alive)
        return JSONResponse(
            {"model": model, "created_at": timestamp(), "response": "", "done": True, "done_reason": reason}
        )

    marked = with_image_markers(prompt, len(images)) if images else prompt
    text = marked if raw else await svc.generate_prompt(resolved, marked, system, template, suffix, think)
    if body.get("_debug_render_only"):
        return JSONResponse(
            {
                "model": model,
                "created_at": timestamp(),
                "response": "",
                "done": True,
                "_debug_info": {"rendered_template": text},
            }
        )

    def final(result: Result, response: str, thinking: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": model,
            "created_at": timestamp(),
            "response": response,
            **({"thinking": thinking} if thinking else {}),
            "done": True,
            "done_reason": _done_reason(result),
        }
        if not raw and result.done:
            out["context"] = result.done.context
        out.update(_durations(result))
        if logprobs and response:
            out["logprobs"] = result.logprobs
        return out

    run: dict[str, Any] = {
        "keep_alive": keep_alive,
        "grammar": grammar,
        "context": context,
        "logprobs": logprobs,
        "top_logprobs": top_logprobs,
        "images": images,
        "think": think,
        "truncate": fit["truncate"],
        "shift": fit["shift"],
    }

    def piece(item: Piece) -> dict[str, Any]:
        line: dict[str, Any] = {"model": model, "created_at": timestamp(), "response": item.text, "done": False}
        if item.thinking:
            line["thinking"] = item.thinking
        if logprobs and item.logprobs:
            line["logprobs"] = item.logprobs
        return line

    start = functools.partial(svc.complete, resolved, text, options, **run)
    return await _answer(request, start, stream, final, piece, lambda result: final(result, ""))


# -- chat ---------------------------------------------------------------------------------------------


def parse_messages(raw: Any) -> list[Message]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ApiError(400, "messages must be an array")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object")
        role = m.get("role")
        if not isinstance(role, str) or role.lower() not in ROLES:
            raise ApiError(400, f"messages[{i}]: role must be one of {', '.join(ROLES)}")
        content = m.get("content", "")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}]: content must be a string")
        calls = m.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise ApiError(400, f"messages[{i}]: tool_calls must be an array")
            calls = [_tool_call(c, i) for c in calls]
        images = m.get("images")
        if images is not None and (not isinstance(images, list) or not all(isinstance(x, str) for x in images)):
            raise ApiError(400, f"messages[{i}]: images must be base64 strings")
        if m.get("thinking") is not None and not isinstance(m.get("thinking"), str):
            raise ApiError(400, f"messages[{i}]: thinking must be a string")
        out.append(
            Message(
                role.lower(),
                content,
                images or None,
                calls,
                m.get("tool_name"),
                m.get("tool_call_id"),
                m.get("thinking"),
            )
        )
    return out


def _tool_call(call: Any, i: int) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ApiError(400, f"messages[{i}]: each tool call needs function.name")
    args = fn.get("arguments", {})
    if not isinstance(args, dict):
        raise ApiError(400, f"messages[{i}]: tool call arguments must be an object")
    out: dict[str, Any] = {"function": {"name": fn["name"], "arguments": args}}
    if isinstance(fn.get("index"), int):
        out["function"]["index"] = fn["index"]
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def parse_tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ApiError(400, "tools must be an array")
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ApiError(400, f"tools[{i}]: each tool needs function.name")
    return list(raw)


@handle_errors
async def chat(request: Request) -> Response:
    svc = service(request)
    body = await read_json(request)
    resolved = await svc.resolve(body.get("model") or body.get("name"))
    model = body.get("model") or body.get("name")
    messages = parse_messages(body.get("messages"))
    tools = parse_tools(body.get("tools"))
    stream = field(body, "stream", bool, True)
    fit = _fit_fields(body)
    if tools and "tools" not in resolved.info.capabilities:
        raise ApiError(400, f'"{resolved.requested}" does not support tools')
    if "completion" not in resolved.info.capabilities:
        raise ApiError(400, f'"{resolved.requested}" does not support chat')
    check_images(resolved, any(m.images for m in messages))
    think = svc.think(resolved, body.get("think"))  # formats.thinking: on by default for a thinking model
    logprobs, top_logprobs = _logprob_fields(body)
    grammar = grammar_for(body.get("format"))
    options = svc.options(resolved, options_of(body))
    keep_alive = keep_alive_of(body)

    if not messages:
        reason = await svc.load_only(resolved, options, keep_alive)
        return JSONResponse(
            {
                "model": model,
                "created_at": timestamp(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
            }
        )

    text = await svc.chat_prompt(
        resolved, messages, tools or None, think, truncate=fit["truncate"], num_ctx=int(options["num_ctx"])
    )
    if body.get("_debug_render_only"):
        return JSONResponse(
            {
                "model": model,
                "created_at": timestamp(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "_debug_info": {"rendered_template": text},
            }
        )

    def final(result: Result, content: str, thinking: str = "") -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if result.tool_calls:
            message["tool_calls"] = with_call_ids(result.tool_calls)
        out: dict[str, Any] = {
            "model": model,
            "created_at": timestamp(),
            "message": message,
            "done": True,
            "done_reason": _done_reason(result),
        }
        out.update(_durations(result))
        if logprobs and content:
            out["logprobs"] = result.logprobs
        return out

    run: dict[str, Any] = {
        "keep_alive": keep_alive,
        "grammar": grammar,
        "tools": tools or None,
        "logprobs": logprobs,
        "top_logprobs": top_logprobs,
        "images": images_of(messages),
        "think": think,
        **fit,
    }

    def piece(item: Piece) -> dict[str, Any]:
        message = {"role": "assistant", "content": item.text, **({"thinking": item.thinking} if item.thinking else {})}
        line: dict[str, Any] = {"model": model, "created_at": timestamp(), "message": message, "done": False}
        if logprobs and item.logprobs:
            line["logprobs"] = item.logprobs
        return line

    def last(result: Result) -> dict[str, Any]:
        return final(result, "" if not result.tool_calls else result.text)

    start = functools.partial(svc.complete, resolved, text, options, **run)
    return await _answer(request, start, stream, final, piece, last)


async def _answer(
    request: Request,
    start: Callable[..., AsyncGenerator[Piece | Result, None]],
    stream: bool,
    final: Callable[[Result, str, str], dict[str, Any]],
    piece: Callable[[Piece], dict[str, Any]],
    last: Callable[[Result], dict[str, Any]],
) -> Response:
    """The answer of /api/generate and /api/chat: ``final(result, text, thinking)`` whole, or a
    ``piece`` line per piece and the ``last`` line, streamed (runtime.api.stream)."""
    if not stream:
        result = await whole(request, start)
        return JSONResponse(final(result, result.text, result.thinking))
    pieces, cancel = await streamed(start)

    async def lines() -> AsyncIterator[dict[str, Any]]:
        async for item in pieces:
            yield piece(item) if isinstance(item, Piece) else last(item)

    return ndjson(lines(), request, pieces, cancel)


# -- embeddings ---------------------------------------------------------------------------------------


@handle_errors
async def embed(request: Request) -> Response:
    svc = service(request)
    body = await read_json(request)
    resolved = await svc.resolve(body.get("model") or body.get("name"))
    raw = body.get("input", [])
    if raw is None:
        raw = []
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
        raise ApiError(400, "invalid input type")
    if inputs == [""]:
        inputs = []
    truncate = field(body, "truncate", bool, True)
    dimensions = field(body, "dimensions", int, 0)
    if dimensions < 0:
        raise ApiError(400, "dimensions must be positive")
    options = svc.options(resolved, options_of(body))
    start = time.perf_counter_ns()
    vectors, count, load_ns = await svc.embed(
        resolved, inputs, options, truncate=truncate, keep_alive=keep_alive_of(body)
    )
    out = []
    for v in vectors:
        v = normalize(v)
        if dimensions and dimensions < len(v):
            v = normalize(v[:dimensions])
        out.append(v)
    response: dict[str, Any] = {"model": body.get("model") or body.get("name"), "embeddings": out}
    response.update(
        {
            k: v
            for k, v in (
                ("total_duration", time.perf_counter_ns() - start),
                ("load_duration", load_ns),
                ("prompt_eval_count", count),
            )
            if v
        }
    )
    return JSONResponse(response)


@handle_errors
async def embeddings(request: Request) -> Response:
    """The legacy endpoint: one prompt, an unnormalised vector."""
    svc = service(request)
    body = await read_json(request)
    resolved = await svc.resolve(body.get("model") or body.get("name"))
    prompt = field(body, "prompt", str, "")
    options = svc.options(resolved, options_of(body))
    if not prompt:
        await svc.load_only(resolved, options, keep_alive_of(body), embedding=True)
        return JSONResponse({"embedding": []})
    vectors, _, _ = await svc.embed(resolved, [prompt], options, truncate=True, keep_alive=keep_alive_of(body))
    return JSONResponse({"embedding": vectors[0]})


# -- models ---------------------------------------------------------------------------------------------


def _model_entry(svc: Any, model: Any) -> dict[str, Any]:
    info = svc.info(model)
    return {
        "name": model.name.display(),
        "model": model.name.display(),
        "modified_at": iso(model.modified),
        "size": model.size,
        "digest": model.id,
        "details": info.details(),
    }


@handle_errors
async def tags(request: Request) -> Response:
    svc = service(request)

    def listing() -> list[dict[str, Any]]:
        # Reads every model's files the first time (a worker thread: the loop keeps serving); a
        # model that cannot be read is listed with details.error (see client.model_info).
        models = sorted(svc.store.models(), key=lambda m: m.modified, reverse=True)
        entries = []
        for m in models:
            entry = _model_entry(svc, m)
            capabilities = svc.info(m).capabilities
            if capabilities:  # omitted when empty, as Ollama's omitempty
                entry["capabilities"] = capabilities
            entries.append(entry)
        return entries

    return JSONResponse({"models": await anyio.to_thread.run_sync(listing)})


@handle_errors
async def show(request: Request) -> Response:
    svc = service(request)
    body = await read_json(request)
    name = body.get("model") or body.get("name")
    resolved = await svc.resolve(name, missing="model '{name}' not found")
    info = resolved.info
    verbose = field(body, "verbose", bool, False)
    model_info = dict(info.gguf)
    model_info.pop("general.name", None)
    model_info.pop("tokenizer.chat_template", None)
    if verbose and info.model_path is not None and not info.error:
        from client.model_info import read_gguf_metadata
        from formats.gguf import GGUFError

        try:
            # Whole arrays (the vocabulary): bounded by formats.gguf, read off the loop.
            full, _, _ = await anyio.to_thread.run_sync(read_gguf_metadata, info.model_path, 1 << 30)
        except (GGUFError, OSError) as e:
            raise ApiError(500, f"reading the model file: {e}") from None
        model_info = {k: v for k, v in full.items() if k not in ("general.name", "tokenizer.chat_template")}
    out: dict[str, Any] = {
        "license": "\n".join(info.licenses),
        "modelfile": render_modelfile(info),
        "parameters": "\n".join(parameter_lines(info.parameters)),
        "template": info.template if info.template is not None else str(info.gguf.get("tokenizer.chat_template") or ""),
        "system": info.system or "",
        "details": info.details(),
        "model_info": model_info,
        "tensors": [{k: t[k] for k in ("name", "type", "shape")} for t in info.tensors],
        "capabilities": info.capabilities,
        "modified_at": iso(resolved.model.modified),
    }
    if info.messages:
        out["messages"] = info.messages
    if info.projectors and not info.error:
        out["projector_info"] = await _projector_info(info.projectors[0], verbose)
    requires = info.config.get("requires")
    if isinstance(requires, str) and requires:
        out["requires"] = requires
    return JSONResponse(out)


async def _projector_info(path: Any, verbose: bool) -> dict[str, Any]:
    """The first projector's GGUF key/values (§8.7), read off the loop like the model's."""
    from client.model_info import read_gguf_metadata
    from formats.gguf import GGUFError

    try:
        meta, _, _ = await anyio.to_thread.run_sync(read_gguf_metadata, path, (1 << 30) if verbose else 5)
    except (GGUFError, OSError) as e:
        raise ApiError(500, f"reading the projector file: {e}") from None
    return meta


@handle_errors
async def ps(request: Request) -> Response:
    svc = service(request)
    models = []
    for runner in svc.scheduler.loaded():
        try:
            model = svc.store.get(ModelName.parse(runner.model))
        except (client_errors.ModelNotFound, NameParseError):
            continue
        await svc.info_async(model)  # read off the loop if this version was never read
        entry = _model_entry(svc, model)
        del entry["modified_at"]
        engine = runner.engine
        fraction = engine.gpu_layers / engine.n_layers if engine.n_layers else 0.0
        entry.update(
            {
                "size": runner.size,
                "size_vram": int(runner.size * fraction),
                "expires_at": iso(runner.expires_at) if runner.expires_at else "2318-01-01T00:00:00Z",
                "context_length": runner.spec.num_ctx,
            }
        )
        models.append(entry)
    # Hangar's own: how many requests wait for a model (to watch a busy daemon; tests poll it).
    return JSONResponse({"models": models}, headers={"X-Hangar-Waiting": str(svc.scheduler.waiting)})


def _two_names(svc: Any, body: dict[str, Any]) -> tuple[ModelName, ModelName]:
    source, destination = body.get("source"), body.get("destination")
    if not isinstance(source, str) or not isinstance(destination, str) or not source or not destination:
        raise ApiError(400, "source and destination are required")
    try:
        return (
            svc.store.parse_name(source, svc.client_settings.default_host),
            svc.store.parse_name(destination, svc.client_settings.default_host),
        )
    except client_errors.InvalidName:
        raise ApiError(400, "invalid model name") from None


@handle_errors
async def copy(request: Request) -> Response:
    svc = service(request)
    body = await read_json(request)
    source, destination = _two_names(svc, body)
    try:
        copy_model(svc.store, source, destination)
    except client_errors.ModelNotFound:
        raise ApiError(404, f'model "{body["source"]}" not found') from None
    return Response(status_code=200)


@handle_errors
async def delete(request: Request) -> Response:
    svc = service(request)
    body = await read_json(request)
    resolved = await svc.resolve(body.get("model") or body.get("name"), missing="model '{name}' not found")
    await svc.scheduler.unload(resolved.key)
    remove_models(svc.store, [resolved.name])
    return Response(status_code=200)


# -- pull and push ----------------------------------------------------------------------------------------


async def _transfer(request: Request, push: bool) -> Response:
    svc = service(request)
    body = await read_json(request)
    text = body.get("model") or body.get("name")
    if not isinstance(text, str) or not text:
        return error(400, "model is required")
    try:
        name = svc.store.parse_name(text, svc.client_settings.default_host)
    except client_errors.InvalidName:
        return error(400, "invalid model name")
    insecure = bool(field(body, "insecure", bool, False))
    stream = field(body, "stream", bool, True)
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def progress(event: Progress) -> None:
        queue.put_nowait(event.to_json())

    async def run() -> None:
        try:
            if push:
                from client.push import PushOptions
                from client.push import push as do_push

                await do_push(name, svc.store, svc.client_settings, PushOptions(insecure=insecure), progress)
            else:
                from client.pull import PullOptions
                from client.pull import pull as do_pull

                await do_pull(name, svc.store, svc.client_settings, PullOptions(insecure=insecure), progress)
        except client_errors.HangarError as e:
            what = "push" if push else "pull"
            message = str(e) if str(e).startswith(("pull model manifest", what)) else f"{what} model: {e}"
            queue.put_nowait({"error": message})
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())

    async def lines() -> AsyncIterator[dict[str, Any]]:
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return await progress_response(lines(), stream, error_status=500)


@handle_errors
async def pull(request: Request) -> Response:
    return await _transfer(request, push=False)


@handle_errors
async def push(request: Request) -> Response:
    return await _transfer(request, push=True)
