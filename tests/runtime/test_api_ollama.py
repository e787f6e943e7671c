"""The Ollama API of a real ``hangar serve`` with tiny random-weight models (real llama.cpp)."""

from __future__ import annotations

import base64
import json
import math
import re

import httpx
import pytest

from tests.runtime.checks import is_json_prefix, prompt_size
from tests.servers import RuntimeProcess
from tests.tinymodels import png

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


@pytest.fixture
def api(runtime: RuntimeProcess) -> httpx.Client:
    with httpx.Client(base_url=runtime.url, timeout=120) as c:
        yield c


def lines(response: httpx.Response) -> list[dict]:
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines() if line]


def test_root_version_and_head(api: httpx.Client) -> None:
    assert api.get("/").text == "Ollama is running"
    assert api.head("/").status_code == 200
    assert api.get("/api/version").json() == {"version": "0.33.0"}


def test_generate_streams_ndjson(api: httpx.Client) -> None:
    r = api.post("/api/generate", json={"model": "tiny", "prompt": "hello", "options": {"num_predict": 12, "seed": 7}})
    items = lines(r)
    assert all(i["model"] == "tiny" and TS.fullmatch(i["created_at"]) for i in items)
    assert all(i["done"] is False and isinstance(i["response"], str) for i in items[:-1])
    final = items[-1]
    assert final["done"] is True and final["response"] == "" and final["done_reason"] in ("stop", "length")
    assert final["prompt_eval_count"] > 0 and final["total_duration"] > 0 and final["prompt_eval_duration"] > 0
    assert isinstance(final["context"], list) and all(isinstance(t, int) for t in final["context"])
    assert final["eval_count"] == 12 if final["done_reason"] == "length" else final["eval_count"] < 12


def test_generate_not_streaming_and_seed_determinism(api: httpx.Client) -> None:
    body = {
        "model": "tiny-long",
        "prompt": "the world",
        "stream": False,
        "options": {"num_predict": 24, "seed": 42, "temperature": 0.9},
    }
    a = api.post("/api/generate", json=body).json()
    b = api.post("/api/generate", json=body).json()
    assert a["response"] == b["response"] and a["eval_count"] == b["eval_count"] > 0
    assert a["done"] is True and "context" in a
    c = api.post("/api/generate", json={**body, "options": {**body["options"], "seed": 43}}).json()
    assert c["response"] != a["response"]


def test_num_predict_and_stop(api: httpx.Client) -> None:
    r = api.post(
        "/api/generate",
        json={
            "model": "tiny-long",
            "prompt": "hello",
            "stream": False,
            "options": {"num_predict": 5, "temperature": 0},
        },
    ).json()
    assert r["done_reason"] == "length" and r["eval_count"] == 5
    full = api.post(
        "/api/generate",
        json={
            "model": "tiny-long",
            "prompt": "hello",
            "stream": False,
            "options": {"num_predict": 40, "temperature": 0},
        },
    ).json()["response"]
    stop = full[10:12]
    cut = api.post(
        "/api/generate",
        json={
            "model": "tiny-long",
            "prompt": "hello",
            "stream": False,
            "options": {"num_predict": 40, "temperature": 0, "stop": [stop]},
        },
    ).json()
    assert cut["done_reason"] == "stop" and cut["response"] == full[: full.index(stop)]


def test_format_json_and_schema(api: httpx.Client) -> None:
    r = api.post(
        "/api/generate",
        json={
            "model": "tiny",
            "prompt": "give json",
            "format": "json",
            "stream": False,
            "options": {"num_predict": 200, "seed": 1},
        },
    ).json()
    # The grammar keeps every output on the way to a JSON object; one that stopped is complete.
    assert r["response"].startswith("{") and is_json_prefix(r["response"])
    assert r["done_reason"] == "length" or isinstance(json.loads(r["response"]), dict)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}, "n": {"type": "integer"}},
        "required": ["city", "n"],
    }
    r = api.post(
        "/api/chat",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "x"}],
            "format": schema,
            "stream": False,
            "options": {"num_predict": 200, "seed": 3},
        },
    ).json()
    value = json.loads(r["message"]["content"])
    assert value["city"] in ("Paris", "Rome") and isinstance(value["n"], int)
    bad = api.post("/api/generate", json={"model": "tiny", "prompt": "x", "format": "xml"})
    assert bad.status_code == 400 and "invalid format" in bad.json()["error"]


def test_templates_system_raw_and_debug_render(api: httpx.Client) -> None:
    r = api.post("/api/generate", json={"model": "tiny-go", "prompt": "hi", "_debug_render_only": True}).json()
    rendered = r["_debug_info"]["rendered_template"]
    assert rendered == "<|system|>You are a test model.<|end|><|user|>hi<|end|><|assistant|>"
    r = api.post(
        "/api/generate", json={"model": "tiny-go", "prompt": "hi", "system": "Other.", "_debug_render_only": True}
    ).json()
    assert r["_debug_info"]["rendered_template"].startswith("<|system|>Other.<|end|>")
    r = api.post(
        "/api/generate",
        json={"model": "tiny-go", "prompt": "hi", "template": "[{{ .Prompt }}]", "_debug_render_only": True},
    ).json()
    assert r["_debug_info"]["rendered_template"] == "[hi]"
    r = api.post(
        "/api/generate", json={"model": "tiny-legacy", "prompt": "hi", "system": "S", "_debug_render_only": True}
    ).json()
    assert r["_debug_info"]["rendered_template"] == "S:S U:hi A:"
    # Chat: the model's MESSAGE layer comes first, its SYSTEM unless the conversation has one.
    r = api.post(
        "/api/chat",
        json={"model": "tiny-go", "messages": [{"role": "user", "content": "q"}], "_debug_render_only": True},
    ).json()
    assert r["_debug_info"]["rendered_template"] == (
        "<|system|>You are a test model.<|end|><|user|>seed question<|end|><|assistant|>seed answer<|end|>"
        "<|user|>q<|end|><|assistant|>"
    )
    # A GGUF chat template (Jinja) when the model has no TEMPLATE layer.
    r = api.post(
        "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "q"}], "_debug_render_only": True}
    ).json()
    assert r["_debug_info"]["rendered_template"] == "<|user|>\nq</s>\n<|assistant|>\n"
    raw = api.post(
        "/api/generate",
        json={"model": "tiny-go", "prompt": "raw text", "raw": True, "stream": False, "options": {"num_predict": 3}},
    ).json()
    assert raw["done"] is True and "context" not in raw
    bad = api.post("/api/generate", json={"model": "tiny-go", "prompt": "x", "raw": True, "template": "{{ .Prompt }}"})
    assert bad.status_code == 400
    broken = api.post("/api/generate", json={"model": "tiny-go", "prompt": "x", "template": "{{ if .Prompt }}"})
    assert broken.status_code == 400 and broken.json()["error"].startswith("template error")


def test_context_continues_a_conversation(api: httpx.Client) -> None:
    first = api.post(
        "/api/generate",
        json={
            "model": "tiny-long",
            "prompt": "hello",
            "stream": False,
            "options": {"num_predict": 4, "temperature": 0},
        },
    ).json()
    second = api.post(
        "/api/generate",
        json={
            "model": "tiny-long",
            "prompt": " more",
            "context": first["context"],
            "stream": False,
            "options": {"num_predict": 4, "temperature": 0},
        },
    ).json()
    assert second["context"][: len(first["context"])] == first["context"]
    # Only what the conversation added is evaluated: the new prompt, and the first reply's last
    # token when num_predict ended it (sampled, never decoded, so not in the cache).
    cached = len(first["context"]) - (first["done_reason"] == "length")
    assert second["prompt_eval_count"] == prompt_size(second) - cached


def test_chat_streaming_and_not(api: httpx.Client) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "system", "content": "s"}, {"role": "USER", "content": "hi"}],
        "options": {"num_predict": 6, "seed": 5},
        "logprobs": True,  # one entry per generated token: the count to check eval_count against
    }
    items = lines(api.post("/api/chat", json=body))
    assert all(i["message"]["role"] == "assistant" for i in items)
    streamed = "".join(i["message"]["content"] for i in items)
    final = items[-1]
    tokens = sum(len(i.get("logprobs", [])) for i in items[:-1])
    assert final["done"] and final["done_reason"] == ("length" if tokens == 6 else "stop")
    assert final["eval_count"] == tokens > 0
    whole = api.post("/api/chat", json={**body, "stream": False}).json()
    assert whole["message"]["content"] == streamed and "context" not in whole
    assert whole["eval_count"] == tokens == len(whole["logprobs"])


def test_tool_calls_are_parsed(api: httpx.Client) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    # Constrain the random model to write a call, so parsing is what is under test.
    call_schema = {
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {"type": "object", "properties": {"city": {"enum": ["Paris"]}}, "required": ["city"]},
        },
        "required": ["name", "arguments"],
    }
    body = {
        "model": "tiny-tools",
        "messages": [{"role": "user", "content": "weather in Paris?"}],
        "tools": tools,
        "format": call_schema,
        "options": {"num_predict": 100, "seed": 1},
    }
    r = api.post("/api/chat", json={**body, "stream": False}).json()
    calls = r["message"]["tool_calls"]
    assert calls[0]["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert re.fullmatch(r"call_[a-z0-9]{8}", calls[0]["id"]) and r["message"]["content"] == ""
    streamed = lines(api.post("/api/chat", json=body))
    assert streamed[-1]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert "".join(i["message"]["content"] for i in streamed[:-1]) == ""  # the call text was held back
    # The tools are rendered into the prompt, and a call in the history is written back.
    history = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    rendered = api.post(
        "/api/chat", json={"model": "tiny-tools", "messages": history, "tools": tools, "_debug_render_only": True}
    ).json()["_debug_info"]["rendered_template"]
    assert '"name":"get_weather"' in rendered and '{"name": "get_weather", "arguments": {"city":"Rome"}}' in rendered
    no_tools = api.post(
        "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": tools}
    )
    assert no_tools.status_code == 400 and no_tools.json()["error"] == '"tiny" does not support tools'


def test_logprobs(api: httpx.Client) -> None:
    r = api.post(
        "/api/generate",
        json={
            "model": "tiny-long",
            "prompt": "hello",
            "stream": False,
            "logprobs": True,
            "top_logprobs": 3,
            "options": {"num_predict": 4, "temperature": 0},
        },
    ).json()
    entries = r["logprobs"]
    assert len(entries) == r["eval_count"]
    for e in entries:
        assert e["logprob"] <= 0 and len(e["top_logprobs"]) == 3
        assert e["top_logprobs"][0]["logprob"] >= e["top_logprobs"][-1]["logprob"]
        assert math.isclose(e["logprob"], e["top_logprobs"][0]["logprob"], abs_tol=1e-6)  # greedy picks the top
    assert api.post("/api/generate", json={"model": "tiny", "prompt": "x", "top_logprobs": 21}).status_code == 400


def test_embed(api: httpx.Client) -> None:
    r = api.post("/api/embed", json={"model": "tiny-embed", "input": ["hello world", "another"]}).json()
    vectors = r["embeddings"]
    assert len(vectors) == 2 and len(vectors[0]) == 64
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert r["prompt_eval_count"] > 0 and r["total_duration"] > 0
    single = api.post("/api/embed", json={"model": "tiny-embed", "input": "hello world"}).json()["embeddings"][0]
    assert single == pytest.approx(vectors[0], abs=1e-5)
    cut = api.post("/api/embed", json={"model": "tiny-embed", "input": "hello world", "dimensions": 16}).json()[
        "embeddings"
    ][0]
    assert len(cut) == 16 and math.isclose(sum(x * x for x in cut), 1.0, rel_tol=1e-5)
    assert api.post("/api/embed", json={"model": "tiny-embed", "input": []}).json()["embeddings"] == []
    bad = api.post("/api/embed", json={"model": "tiny-embed", "input": [1, 2]})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid input type"
    long = api.post("/api/embed", json={"model": "tiny-embed", "input": "word " * 2000, "truncate": False})
    assert long.status_code == 400 and long.json()["error"] == "the input length exceeds the context length"
    assert len(api.post("/api/embed", json={"model": "tiny-embed", "input": "word " * 2000}).json()["embeddings"]) == 1
    legacy = api.post("/api/embeddings", json={"model": "tiny-embed", "prompt": "hello world"}).json()["embedding"]
    norm = math.sqrt(sum(x * x for x in legacy))
    assert [x / norm for x in legacy] == pytest.approx(vectors[0], abs=1e-5)
    assert api.post("/api/embeddings", json={"model": "tiny-embed", "prompt": ""}).json() == {"embedding": []}
    gen = api.post("/api/generate", json={"model": "tiny-embed", "prompt": "x"})
    assert gen.status_code == 400 and gen.json()["error"] == '"tiny-embed" does not support generate'
    # A generative model embeds too (mean pooling).
    assert len(api.post("/api/embed", json={"model": "tiny-long", "input": "x"}).json()["embeddings"][0]) == 64


def test_tags_show_copy_delete(api: httpx.Client) -> None:
    tags = api.get("/api/tags").json()["models"]
    names = [m["name"] for m in tags]
    assert {"tiny:latest", "tiny-go:latest", "tiny-embed:latest"} <= set(names)
    entry = next(m for m in tags if m["name"] == "tiny-go:latest")
    assert entry["model"] == "tiny-go:latest" and len(entry["digest"]) == 64 and entry["size"] > 400_000
    assert entry["details"]["family"] == "llama" and entry["details"]["quantization_level"] == "F32"
    modified = [m["modified_at"] for m in tags]
    assert modified == sorted(modified, reverse=True)

    show = api.post("/api/show", json={"model": "tiny-go"}).json()
    assert show["system"] == "You are a test model." and show["license"] == "Test License 1.0"
    assert show["template"].startswith("{{- if .System }}")
    assert 'stop                           "<|end|>"' in show["parameters"].splitlines()
    assert show["capabilities"] == ["completion"] and show["messages"][0]["content"] == "seed question"
    assert show["model_info"]["general.architecture"] == "llama" and show["model_info"]["llama.context_length"] == 512
    assert show["model_info"]["tokenizer.ggml.tokens"] == []  # long arrays summarised unless verbose
    assert (
        len(
            api.post("/api/show", json={"model": "tiny-go", "verbose": True}).json()["model_info"][
                "tokenizer.ggml.tokens"
            ]
        )
        > 200
    )
    assert show["tensors"][0].keys() == {"name", "type", "shape"}
    assert "FROM " in show["modelfile"] and "PARAMETER stop <|end|>" in show["modelfile"]
    assert api.post("/api/show", json={"model": "tiny-embed"}).json()["capabilities"] == ["embedding"]
    assert "tools" in api.post("/api/show", json={"model": "tiny-tools"}).json()["capabilities"]
    missing = api.post("/api/show", json={"model": "nope"})
    assert missing.status_code == 404 and missing.json() == {"error": "model 'nope' not found"}

    assert api.post("/api/copy", json={"source": "tiny-go", "destination": "copied/model:x"}).status_code == 200
    assert api.post("/api/show", json={"model": "copied/model:x"}).json()["system"] == "You are a test model."
    assert api.post("/api/copy", json={"source": "nope", "destination": "x"}).json() == {
        "error": 'model "nope" not found'
    }
    assert api.post("/api/copy", json={"source": "tiny", "destination": "a/b/c/d"}).status_code == 400
    assert api.request("DELETE", "/api/delete", json={"model": "copied/model:x"}).status_code == 200
    gone = api.request("DELETE", "/api/delete", json={"model": "copied/model:x"})
    assert gone.status_code == 404 and gone.json() == {"error": "model 'copied/model:x' not found"}
    assert api.post("/api/show", json={"model": "tiny-go"}).status_code == 200  # the original keeps its blobs


def test_errors(api: httpx.Client) -> None:
    r = api.post("/api/generate", json={"model": "missing-model", "prompt": "x"})
    assert r.status_code == 404 and r.json() == {"error": 'model "missing-model" not found, try pulling it first'}
    assert r.headers["content-type"].startswith("application/json")
    assert api.post("/api/chat", content=b"").json() == {"error": "missing request body"}
    assert api.post("/api/chat", content=b"{nope").status_code == 400
    assert api.post("/api/chat", json=[1]).status_code == 400
    assert api.post("/api/generate", json={"model": "tiny", "prompt": 5}).status_code == 400
    assert api.post("/api/generate", json={"model": "a/b/c/d", "prompt": "x"}).json() == {"error": "invalid model name"}
    bad_opt = api.post("/api/generate", json={"model": "tiny", "prompt": "x", "options": {"num_predict": "many"}})
    assert bad_opt.status_code == 400 and "num_predict" in bad_opt.json()["error"]
    assert (
        api.post("/api/chat", json={"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}).status_code
        == 400
    )
    assert api.post("/api/generate", json={"model": "tiny", "prompt": "x", "keep_alive": "-1"}).status_code == 400
    think = api.post("/api/generate", json={"model": "tiny", "prompt": "x", "think": True})
    assert think.status_code == 400 and think.json()["error"] == '"tiny" does not support thinking'
    images = api.post("/api/generate", json={"model": "tiny", "prompt": "x", "images": ["aGVsbG8="]})
    assert images.status_code == 400 and "does not support images" in images.json()["error"]
    assert api.get("/api/nope").status_code == 404
    assert api.get("/api/generate").status_code == 405


def test_load_unload_and_ps(api: httpx.Client) -> None:
    r = api.post("/api/generate", json={"model": "tiny-go", "keep_alive": "10m"}).json()
    assert r["done"] and r["done_reason"] == "load" and r["response"] == ""
    ps = {m["name"]: m for m in api.get("/api/ps").json()["models"]}
    entry = ps["tiny-go:latest"]
    assert entry["context_length"] == 512 and entry["size_vram"] == 0 and entry["size"] > 0
    assert TS.fullmatch(entry["expires_at"]) and len(entry["digest"]) == 64
    r = api.post("/api/chat", json={"model": "tiny-go", "messages": [], "keep_alive": 0}).json()
    assert r["done_reason"] == "unload" and r["message"] == {"role": "assistant", "content": ""}
    assert "tiny-go:latest" not in {m["name"] for m in api.get("/api/ps").json()["models"]}


RED = base64.b64encode(png(40, 30, (220, 20, 20))).decode()
BLUE = base64.b64encode(png(40, 30, (20, 20, 220))).decode()


def test_images_through_the_projector(api: httpx.Client) -> None:
    """A model with a projector layer reads images: each picture (scaled to 32×32) adds 16
    embeddings to the prompt, and a different picture changes what the model predicts."""
    assert "vision" in api.post("/api/show", json={"model": "tiny-vision"}).json()["capabilities"]
    greedy = {"temperature": 0, "num_predict": 3}

    def generate(**extra: object) -> dict:  # type: ignore[type-arg]
        body = {"model": "tiny-vision", "prompt": "what is this?", "stream": False, "options": greedy}
        r = api.post("/api/generate", json={**body, **extra})
        assert r.status_code == 200, r.text
        return dict(r.json())

    text_only = generate()
    red = generate(images=[RED], logprobs=True)
    # 16 embeddings per image (the text around an image may split into a token more or two). An
    # image prompt is evaluated whole; the text one may find its start cached, hence its size.
    assert 16 <= red["prompt_eval_count"] - prompt_size(text_only) <= 18
    two = generate(images=[RED, BLUE])
    assert 32 <= two["prompt_eval_count"] - prompt_size(text_only) <= 36
    blue = generate(images=[BLUE], logprobs=True)
    assert red["logprobs"][0]["logprob"] != blue["logprobs"][0]["logprob"]
    again = generate(images=[RED], logprobs=True)
    assert (again["response"], again["logprobs"]) == (red["response"], red["logprobs"])
    # The image's positions are never reused as a text prefix, and the context sent back holds
    # only real tokens.
    assert generate()["response"] == text_only["response"]
    assert all(t >= 0 for t in red["context"])

    chat = api.post(
        "/api/chat",
        json={
            "model": "tiny-vision",
            "messages": [{"role": "user", "content": "what is this?", "images": [RED]}],
            "stream": False,
            "options": greedy,
        },
    )
    assert chat.status_code == 200 and chat.json()["prompt_eval_count"] > 16


def test_image_errors(api: httpx.Client) -> None:
    def status(model: str, images: list[str], path: str = "/api/generate") -> tuple[int, str]:
        body: dict = {"model": model, "stream": False, "options": {"num_predict": 1}}  # type: ignore[type-arg]
        if path == "/api/generate":
            body.update(prompt="x", images=images)
        else:
            body["messages"] = [{"role": "user", "content": "x", "images": images}]
        r = api.post(path, json=body)
        return r.status_code, r.json().get("error", "")

    assert status("tiny", [RED]) == (400, '"tiny" does not support images')
    code, error = status("tiny-vision", [base64.b64encode(b"not a picture").decode()])
    assert code == 400 and "image 1 is not a picture" in error
    assert status("tiny-vision", ["***"]) == (400, "invalid image data: not base64")
    assert status("tiny-vision", ["***"], "/api/chat") == (400, "invalid image data: not base64")
    context = api.post(
        "/api/generate",
        json={"model": "tiny-vision", "prompt": "x", "images": [RED], "context": [1, 2], "stream": False},
    )
    assert context.status_code == 400 and "context cannot be combined with images" in context.json()["error"]
    # A bad context token is refused, not passed to llama.cpp.
    bad = api.post("/api/generate", json={"model": "tiny", "prompt": "x", "context": [10**6], "stream": False})
    assert bad.status_code == 400 and "tokens this model does not have" in bad.json()["error"]
