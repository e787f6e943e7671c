"""Clients we did not write against ``hangar serve``: the official ``ollama`` and ``openai``
Python packages, plus the raw shapes of the OpenAI-compatible endpoints."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from pathlib import Path

import httpx
import jsonschema
import ollama
import openai
import pytest

from client.config import load
from client.push import push
from client.store import Store
from formats.names import ModelName
from tests.servers import RegistryProcess, RuntimeProcess
from tests.tinymodels import add_model, png


@pytest.fixture
def oc(runtime: RuntimeProcess) -> ollama.Client:
    return ollama.Client(host=runtime.url)


@pytest.fixture
def oa(runtime: RuntimeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=runtime.url + "/v1", api_key="unused")


# -- the ollama package ---------------------------------------------------------------------------------


def test_ollama_chat_and_generate(oc: ollama.Client) -> None:
    r = oc.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 5, "seed": 1})
    assert r.message.role == "assistant" and isinstance(r.message.content, str) and r.done
    parts = list(
        oc.chat(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            options={"num_predict": 5, "seed": 1},
        )
    )
    assert "".join(p.message.content or "" for p in parts) == r.message.content and parts[-1].done
    g = oc.generate(model="tiny-long", prompt="hello", options={"num_predict": 4, "temperature": 0})
    assert g.done_reason == "length" and g.eval_count == 4 and g.context
    streamed = "".join(
        p.response
        for p in oc.generate(
            model="tiny-long", prompt="hello", stream=True, options={"num_predict": 4, "temperature": 0}
        )
    )
    assert streamed == g.response
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    j = oc.chat(
        model="tiny", messages=[{"role": "user", "content": "x"}], format=schema, options={"num_predict": 50, "seed": 2}
    )
    assert isinstance(json.loads(j.message.content)["ok"], bool)


def test_ollama_embed_list_show_ps_copy_delete(oc: ollama.Client) -> None:
    e = oc.embed(model="tiny-embed", input=["a", "b"])
    assert len(e.embeddings) == 2 and math.isclose(sum(x * x for x in e.embeddings[0]), 1, rel_tol=1e-5)
    assert len(oc.embeddings(model="tiny-embed", prompt="a").embedding) == 64
    names = [m.model for m in oc.list().models]
    assert "tiny:latest" in names
    show = oc.show("tiny-go")
    assert "SYSTEM You are a test model." in show.modelfile and show.details.family == "llama"
    assert "completion" in show.capabilities and show.modelinfo["general.architecture"] == "llama"
    oc.generate(model="tiny-go", prompt="", keep_alive="5m")
    assert "tiny-go:latest" in [m.model for m in oc.ps().models]
    oc.copy("tiny", "pkg/copy")
    assert "pkg/copy:latest" in [m.model for m in oc.list().models]
    oc.delete("pkg/copy")
    assert "pkg/copy:latest" not in [m.model for m in oc.list().models]
    with pytest.raises(ollama.ResponseError) as e_info:
        oc.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    assert e_info.value.status_code == 404 and "not found" in e_info.value.error


def test_ollama_pull_and_push_through_the_runtime(
    registry: RegistryProcess, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """The runtime's /api/pull and /api/push, driven by the ollama package, against our registry."""
    source = load({"HANGAR_HOME": str(tmp_path / "source")})
    store = Store(source.models)
    name = add_model(store, f"{registry.host}/pkg/tiny:v1", tiny_models["plain"], system="pulled")
    asyncio.run(push(name, store, source))
    home = tmp_path / "runtime"
    rt = RuntimeProcess(home).start()
    try:
        client = ollama.Client(host=rt.url)
        progress = list(client.pull(f"{registry.host}/pkg/tiny:v1", insecure=True, stream=True))
        statuses = [p.status for p in progress]
        assert statuses[0] == "pulling manifest" and statuses[-3:] == [
            "verifying sha256 digest",
            "writing manifest",
            "success",
        ]
        assert any(p.digest and p.total and p.completed == p.total for p in progress)
        assert "SYSTEM pulled" in client.show(f"{registry.host}/pkg/tiny:v1").modelfile
        client.copy(f"{registry.host}/pkg/tiny:v1", f"{registry.host}/pkg/again:v2")
        pushed = list(client.push(f"{registry.host}/pkg/again:v2", insecure=True, stream=True))
        assert [p.status for p in pushed][-2:] == ["pushing manifest", "success"]
        # What the registry now holds is byte for byte what the runtime's store holds.
        pushed_store = Store(load({"HANGAR_HOME": str(home)}).models)
        local = pushed_store.get(ModelName.parse(f"{registry.host}/pkg/again:v2"))
        remote = httpx.get(f"{registry.url}/v2/pkg/again/manifests/v2", headers={"Accept": local.manifest.media_type})
        assert remote.status_code == 200 and remote.content == local.manifest.raw
        blobs = list(local.manifest.blobs())
        assert len(blobs) >= 3  # config, model, system
        for blob in blobs:
            got = httpx.get(f"{registry.url}/v2/pkg/again/blobs/{blob.digest}", follow_redirects=True)
            assert got.status_code == 200 and got.content == pushed_store.blob_path(blob.digest).read_bytes()
        with pytest.raises(ollama.ResponseError):
            client.pull(f"{registry.host}/pkg/missing:v1", insecure=True)
    finally:
        rt.stop()


# -- the openai package ---------------------------------------------------------------------------------


def test_openai_chat(oa: openai.OpenAI) -> None:
    r = oa.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, seed=3)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.prompt_tokens > 0
    assert r.id.startswith("chatcmpl-") and r.system_fingerprint == "fp_ollama"
    chunks = list(
        oa.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_openai_json_schema_output_validates(oa: openai.OpenAI) -> None:
    # Closed string sets and numbers: a random-weight model writes arbitrary bytes inside free
    # strings, which the grammar cannot keep to valid UTF-8; every other part of the schema holds.
    schema = {
        "type": "object",
        "properties": {
            "name": {"enum": ["Ann", "Bob", "Cleo"]},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "age", "tags", "ok"],
        "additionalProperties": False,
    }
    for seed in range(3):
        r = oa.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "a person"}],
            max_tokens=200,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        )
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_openai_tools(oa: openai.OpenAI, runtime: RuntimeProcess) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    schema = {
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {"type": "object", "properties": {"city": {"enum": ["Oslo"]}}, "required": ["city"]},
        },
        "required": ["name", "arguments"],
    }
    r = oa.chat.completions.create(
        model="tiny-tools",
        messages=[{"role": "user", "content": "weather?"}],
        tools=tools,
        max_tokens=80,
        seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "call", "schema": schema}},
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert (
        call.type == "function"
        and call.function.name == "get_weather"
        and json.loads(call.function.arguments) == {"city": "Oslo"}
    )
    # The answer goes back as a tool message naming the call.
    follow = oa.chat.completions.create(
        model="tiny-tools",
        max_tokens=3,
        messages=[
            {"role": "user", "content": "weather?"},
            r.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "cold"},
        ],
    )
    assert follow.choices[0].message.role == "assistant"


def test_openai_completions_embeddings_models(oa: openai.OpenAI) -> None:
    c = oa.completions.create(model="tiny-long", prompt="hello", max_tokens=4, temperature=0)
    assert c.object == "text_completion" and c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 4
    streamed = "".join(
        x.choices[0].text
        for x in oa.completions.create(model="tiny-long", prompt="hello", max_tokens=4, temperature=0, stream=True)
        if x.choices
    )
    assert streamed == c.choices[0].text
    e = oa.embeddings.create(model="tiny-embed", input=["a", "bb"])
    assert len(e.data) == 2 and e.data[1].index == 1 and len(e.data[0].embedding) == 64 and e.usage.prompt_tokens > 0
    b = oa.embeddings.create(model="tiny-embed", input="a", encoding_format="base64")
    decoded = struct.unpack("<64f", base64.b64decode(b.data[0].embedding))  # little-endian float32
    assert list(decoded) == pytest.approx(e.data[0].embedding, abs=1e-6)
    d = oa.embeddings.create(model="tiny-embed", input="a", dimensions=8)
    assert len(d.data[0].embedding) == 8
    ids = [m.id for m in oa.models.list().data]
    assert "tiny:latest" in ids
    m = oa.models.retrieve("tiny")
    assert m.id == "tiny:latest" and m.owned_by == "library"
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("missing")


def test_openai_raw_shapes_and_errors(runtime: RuntimeProcess) -> None:
    url = runtime.url
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "[] is too short - 'messages'",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    r = httpx.post(
        url + "/v1/chat/completions", json={"model": "missing", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    sse = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "tiny", "stream": True, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
        timeout=60,
    )
    assert sse.headers["content-type"].startswith("text/event-stream")
    events = [line for line in sse.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["delta"] == {}
    raw = httpx.post(
        url + "/v1/embeddings", json={"model": "tiny-embed", "input": "a", "encoding_format": "base64"}
    ).json()
    vector = struct.unpack(f"<{64}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-4)
    assert httpx.post(url + "/v1/embeddings", json={"model": "tiny-embed", "input": []}).status_code == 400
    assert (
        httpx.post(
            url + "/v1/embeddings", json={"model": "tiny-embed", "input": "a", "encoding_format": "hex"}
        ).status_code
        == 400
    )
    parts = httpx.post(
        url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "max_tokens": 1,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}
            ],
        },
    )
    assert parts.status_code == 200
    http_image = httpx.post(
        url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
        },
    )
    assert http_image.status_code == 400


def test_images_from_both_packages(oc: ollama.Client, oa: openai.OpenAI, tmp_path: Path) -> None:
    """Pictures reach a model with a projector from the ollama package (bytes or a file path) and
    from the openai package (a base64 data URL); all three read the same picture identically."""
    picture = png(24, 24, (10, 200, 10))
    (tmp_path / "green.png").write_bytes(picture)
    greedy = {"temperature": 0, "num_predict": 4}
    as_bytes = oc.chat(
        model="tiny-vision", messages=[{"role": "user", "content": "what?", "images": [picture]}], options=greedy
    )
    as_path = oc.chat(
        model="tiny-vision",
        messages=[{"role": "user", "content": "what?", "images": [str(tmp_path / "green.png")]}],
        options=greedy,
    )
    text_only = oc.chat(model="tiny-vision", messages=[{"role": "user", "content": "what?"}], options=greedy)
    assert as_bytes.message.content == as_path.message.content
    assert as_bytes.prompt_eval_count is not None and text_only.prompt_eval_count is not None
    assert as_bytes.prompt_eval_count >= text_only.prompt_eval_count + 16

    url = "data:image/png;base64," + base64.b64encode(picture).decode()
    r = oa.chat.completions.create(
        model="tiny-vision",
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
        temperature=0,
        max_tokens=4,
    )
    assert r.usage is not None and r.usage.prompt_tokens >= 16
    with pytest.raises(openai.BadRequestError, match="only base64 data URLs"):
        oa.chat.completions.create(
            model="tiny-vision",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
        )
