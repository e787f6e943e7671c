"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models`` (§9 of shared/spec/ollama-protocol.md). Thin translations onto ``runtime.service``;
errors in OpenAI's shape."""

from __future__ import annotations

import base64
import functools
import json
import random
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from formats.thinking import ThinkError, openai_think
from runtime.api.common import handle_errors, read_json, service, with_call_ids
from runtime.api.stream import sse, streamed, whole
from runtime.prompts import Message
from runtime.service import ApiError, Piece, Resolved, Result, grammar_for, images_of, normalize


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error object; also the last event of a stream that failed (``runtime.api.stream``)."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def openai_error(status: int, message: str) -> Response:
    return JSONResponse(error_body(status, message), status_code=status)


def openai_errors(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    return handle_errors(fn, openai_error)


def _sampling_options(body: dict[str, Any], zero_top_p_is_default: bool = False) -> dict[str, Any]:
    """OpenAI request fields as native options (temperature and top_p default to 1.0, as Ollama).
    A ``top_p`` of 0 is kept on chat and means "absent" on ``/v1/completions`` (§9.1, §9.2)."""
    options: dict[str, Any] = {}
    for name, target in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ApiError(400, f"{name} must be a number")
            options[target] = value
    options.setdefault("temperature", 1.0)
    if "top_p" not in options or (zero_top_p_is_default and not options["top_p"]):
        options["top_p"] = 1.0
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise ApiError(400, "max_tokens must be an integer")
        options["num_predict"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ApiError(400, "stop must be a string or an array of strings")
        options["stop"] = stops
    if "seed" in options:
        options["seed"] = int(options["seed"])
    return options


def _format(body: dict[str, Any]) -> Any:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise ApiError(400, "response_format must be an object")
    kind = fmt.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be an object")
        return schema
    if kind in (None, "text"):
        return None
    raise ApiError(400, f"invalid response_format type: {kind!r}")


def _messages(raw: Any, model: Any = None) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "[] is too short - 'messages'")
    out: list[Message] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] needs a role")
        role = m["role"].lower()
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ApiError(400, f"messages[{i}]: invalid role {role!r}")
        content = m.get("content")
        calls = None
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                fn = call.get("function", {}) if isinstance(call, dict) else {}
                try:
                    args = (
                        json.loads(fn.get("arguments") or "{}")
                        if isinstance(fn.get("arguments"), str)
                        else fn.get("arguments", {})
                    )
                except ValueError:
                    raise ApiError(400, f"messages[{i}]: tool call arguments are not JSON") from None
                calls.append({"function": {"name": fn.get("name", ""), "arguments": args or {}}})
                if isinstance(call.get("id"), str):
                    call_names[call["id"]] = fn.get("name", "")
        tool_name = m.get("name") or call_names.get(m.get("tool_call_id") or "")
        if content is None or isinstance(content, str):
            out.append(
                Message(
                    role,
                    content or "",
                    tool_calls=calls,
                    tool_name=tool_name,
                    tool_call_id=m.get("tool_call_id"),
                    thinking=_reasoning(m, i),
                )
            )
            continue
        if not isinstance(content, list):
            raise ApiError(400, f"messages[{i}]: content must be a string or an array of parts")
        for part in content:  # one native message per part, as Ollama does
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                out.append(Message(role, str(part.get("text", "")), tool_calls=calls, tool_name=tool_name))
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
                    raise ApiError(400, "invalid image input: only base64 data URLs are supported")
                out.append(Message(role, "", images=[url.split(";base64,", 1)[1]]))
            elif kind == "input_audio":
                audio = part.get("input_audio")
                if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                    raise ApiError(400, "invalid input_audio part: input_audio.data (base64) is required")
                # No model Hangar runs hears: say so rather than drop the audio silently.
                raise ApiError(400, f'"{model}" does not support audio input')
            else:
                raise ApiError(400, f"invalid message content part type: {kind!r}")
    return out


def _reasoning(m: dict[str, Any], i: int) -> str | None:
    """An assistant message's earlier thinking: Ollama's ``reasoning``, or ``reasoning_content``
    as DeepSeek's and vLLM's APIs name it."""
    value = m.get("reasoning", m.get("reasoning_content"))
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"messages[{i}]: reasoning must be a string")
    return value or None


def _finish(result: Result) -> str:
    if result.tool_calls:
        return "tool_calls"
    reason = result.done.reason if result.done else "stop"
    return "length" if reason == "length" else "stop"


def _usage(result: Result) -> dict[str, Any]:
    prompt = result.done.prompt_tokens if result.done else 0
    completion = result.done.eval_tokens if result.done else 0
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if result.done and result.done.cached_tokens:  # as OpenAI: the prompt tokens the cache supplied
        usage["prompt_tokens_details"] = {"cached_tokens": result.done.cached_tokens}
    return usage


def _openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": c["id"],
            "index": c["function"]["index"],
            "type": "function",
            "function": {"name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])},
        }
        for c in with_call_ids(calls)
    ]


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _logprob_request(body: dict[str, Any]) -> tuple[bool, int]:
    top = body.get("top_logprobs") or 0
    wanted = bool(body.get("logprobs"))
    if isinstance(body.get("logprobs"), int) and not isinstance(body.get("logprobs"), bool):  # completions
        top, wanted = body["logprobs"], True  # an int: that many alternatives, 0 included
    if not isinstance(top, int) or not 0 <= top <= 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")
    return wanted or top > 0, top


def _completion_logprobs(entries: list[dict[str, Any]], top: int) -> dict[str, Any]:
    """Logprobs in the legacy completions shape (``tokens``, ``token_logprobs``, ``top_logprobs``
    as token → logprob maps, ``text_offset`` within the completion), as the OpenAI SDKs read it."""
    offsets, at = [], 0
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs", [])} for e in entries]
        if top
        else None,
        "text_offset": offsets,
    }


@openai_errors
async def chat_completions(request: Request) -> Response:
    svc = service(request)
    body = await read_json(request)
    model = body.get("model")
    resolved: Resolved = await svc.resolve(model, missing='model "{name}" not found, try pulling it first')
    messages = _messages(body.get("messages"), model)
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise ApiError(400, "tools must be an array")
    if tools and "tools" not in resolved.info.capabilities:
        raise ApiError(400, f'"{model}" does not support tools')
    if "completion" not in resolved.info.capabilities:  # an embedding model
        raise ApiError(400, f'"{model}" does not support chat')
    options = svc.options(resolved, _sampling_options(body))
    grammar = grammar_for(_format(body))
    logprobs, top = _logprob_request(body)
    try:  # reasoning_effort / reasoning.effort as think; absent: on for a thinking model
        think = svc.think(resolved, openai_think(body))
    except ThinkError as e:
        raise ApiError(400, str(e)) from None
    text = await svc.chat_prompt(
        resolved, messages, tools or None, think, truncate=True, num_ctx=int(options["num_ctx"])
    )
    ident, created = f"chatcmpl-{random.randrange(999)}", int(time.time())
    run: dict[str, Any] = {
        "keep_alive": None,
        "grammar": grammar,
        "tools": tools or None,
        "logprobs": logprobs,
        "top_logprobs": top,
        "images": images_of(messages),
        "think": think,
    }

    def choice_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        return {"content": entries} if logprobs else None

    start = functools.partial(svc.complete, resolved, text, options, **run)
    if not body.get("stream"):
        result = await whole(request, start)
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        if result.thinking:
            message["reasoning"] = result.thinking
        if result.tool_calls:
            message["tool_calls"] = _openai_tool_calls(result.tool_calls)
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": _finish(result)}
        if logprobs:
            choice["logprobs"] = choice_logprobs(result.logprobs)
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_ollama",
                "choices": [choice],
                "usage": _usage(result),
            }
        )

    pieces, cancel = await streamed(start)
    include_usage = _include_usage(body)

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
            **extra,
        }

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        sent_role = False
        async for item in pieces:
            if isinstance(item, Piece):
                # Thinking first, in a chunk of its own, as Ollama splits a piece with both.
                parts: list[dict[str, Any]] = [{"content": "", "reasoning": item.thinking}] if item.thinking else []
                if item.text or not item.thinking:
                    parts.append({"content": item.text})
                for n, delta in enumerate(parts):
                    delta = {"role": "assistant", **delta} if not sent_role else delta
                    sent_role = True
                    choice = {"index": 0, "delta": delta, "finish_reason": None}
                    if logprobs:
                        choice["logprobs"] = choice_logprobs(item.logprobs if n == len(parts) - 1 else [])
                    yield chunk([choice])
                continue
            if item.tool_calls:
                delta = {
                    "role": "assistant",
                    "content": item.text or None,
                    "tool_calls": _openai_tool_calls(item.tool_calls),
                }
                yield chunk([{"index": 0, "delta": delta, "finish_reason": None}])
            elif not sent_role:
                yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            yield chunk([{"index": 0, "delta": {}, "finish_reason": _finish(item)}])
            if include_usage:
                yield chunk([], usage=_usage(item))

    return sse(chunks(), error_body, request, pieces, cancel)


@openai_errors
async def completions(request: Request) -> Response:
    svc = service(request)
    body = await read_json(request)
    model = body.get("model")
    resolved = await svc.resolve(model, missing='model "{name}" not found, try pulling it first')
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    suffix = body.get("suffix") or ""
    if "completion" not in resolved.info.capabilities:  # an embedding model
        raise ApiError(400, f'"{model}" does not support generate')
    options = svc.options(resolved, _sampling_options(body, zero_top_p_is_default=True))
    logprobs, top = _logprob_request(body)
    think = svc.think(resolved, None)  # as Ollama: a thinking model thinks; the text is its answer only
    text = await svc.generate_prompt(resolved, prompt, None, None, suffix, think) if prompt or suffix else ""
    ident, created = f"cmpl-{random.randrange(999)}", int(time.time())
    run: dict[str, Any] = {"keep_alive": None, "logprobs": logprobs, "top_logprobs": top, "think": think}

    def chunk_obj(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": choices,
            **extra,
        }

    def choice_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        return _completion_logprobs(entries, top) if logprobs else None

    if not prompt and not suffix:  # as /api/generate: an empty prompt only loads the model
        await svc.load_only(resolved, options, None)
        empty = {"text": "", "index": 0, "finish_reason": "stop", "logprobs": None}
        loaded = chunk_obj([empty], usage=_usage(Result()))
        if not body.get("stream"):
            return JSONResponse(loaded)

        async def once() -> AsyncIterator[dict[str, Any]]:
            yield loaded

        return sse(once(), error_body)

    start = functools.partial(svc.complete, resolved, text, options, **run)
    if not body.get("stream"):
        result = await whole(request, start)
        choice = {
            "text": result.text,
            "index": 0,
            "finish_reason": _finish(result),
            "logprobs": choice_logprobs(result.logprobs),
        }
        return JSONResponse(chunk_obj([choice], usage=_usage(result)))

    pieces, cancel = await streamed(start)
    include_usage = _include_usage(body)
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async for item in pieces:
            extra = {"usage": zero} if include_usage else {}
            if isinstance(item, Piece):
                logprob = choice_logprobs(item.logprobs)
                yield chunk_obj([{"text": item.text, "index": 0, "finish_reason": None, "logprobs": logprob}], **extra)
            else:
                yield chunk_obj([{"text": "", "index": 0, "finish_reason": _finish(item), "logprobs": None}], **extra)
                if include_usage:
                    yield chunk_obj([], usage=_usage(item))

    return sse(chunks(), error_body, request, pieces, cancel)


@openai_errors
async def embeddings(request: Request) -> Response:
    svc = service(request)
    body = await read_json(request)
    model = body.get("model")
    resolved = await svc.resolve(model, missing='model "{name}" not found, try pulling it first')
    raw = body.get("input")
    if raw == "":
        raw = [""]
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
        raise ApiError(400, "invalid input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(400, f"invalid encoding format: {encoding!r}")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions <= 0):
        raise ApiError(400, "dimensions must be a positive integer")
    vectors, count, _ = await svc.embed(resolved, inputs, svc.options(resolved, {}), truncate=True, keep_alive=None)
    data = []
    for i, v in enumerate(vectors):
        v = normalize(v)
        if dimensions and dimensions < len(v):
            v = normalize(v[:dimensions])
        value: Any = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if encoding == "base64" else v
        data.append({"object": "embedding", "embedding": value, "index": i})
    return JSONResponse(
        {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": count, "total_tokens": count}}
    )


def _model_object(model: Any) -> dict[str, Any]:
    return {
        "id": model.name.display(),
        "object": "model",
        "created": int(model.modified),
        "owned_by": model.name.namespace,
    }


@openai_errors
async def list_models(request: Request) -> Response:
    svc = service(request)
    models = sorted(svc.store.models(), key=lambda m: m.modified, reverse=True)
    return JSONResponse({"object": "list", "data": [_model_object(m) for m in models]})


@openai_errors
async def retrieve_model(request: Request) -> Response:
    svc = service(request)
    name = request.path_params["model"]
    resolved = await svc.resolve(name, missing='model "{name}" not found')
    return JSONResponse(_model_object(resolved.model))
