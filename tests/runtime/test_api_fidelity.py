"""Details of Ollama's and OpenAI's APIs that clients rely on, against a real ``hangar serve``
(real llama.cpp, tiny random-weight models; the ``ollama`` and ``openai`` packages where they
read the answer): errors after streaming began, prompts longer than the context (``truncate``,
``shift``, ``num_keep``), the system prompt rule, and the smaller fields of show, tags, status,
progress and the ``/v1`` translations (issue #18)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import populate
from tests.runtime.checks import prompt_size
from tests.servers import RuntimeProcess
from tests.tinymodels import add_model

WORDS = "the quick brown fox jumps over a lazy dog " * 45  # 405 words, ~2000 tokens
FAULT = "test fault: the engine failed after 3 tokens"
GREEDY_LONG = {"model": "tiny-long", "prompt": "hello", "options": {"temperature": 0, "num_predict": 40}}
# Renders each message's role, tool name and content, so what reached the template can be counted.
ECHO_TEMPLATE = (
    "{{- range .Messages }}[{{ .Role }}{{ if .ToolName }}:{{ .ToolName }}{{ end }}]{{ .Content }}{{ end }}[assistant]"
)


def ndjson(response: httpx.Response) -> list[dict]:  # type: ignore[type-arg]
    assert response.headers["content-type"].startswith("application/x-ndjson"), response.text
    return [json.loads(line) for line in response.text.splitlines() if line]


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Iterator[RuntimeProcess]:
    """A runtime whose engine fails after the third token of every generation (the test hook
    HANGAR_TEST_FAIL_AFTER): an error that arrives after streaming began."""
    home = tmp_path_factory.mktemp("failing-home")
    populate(home, tiny_models)
    proc = RuntimeProcess(home, HANGAR_TEST_FAIL_AFTER="3").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Iterator[RuntimeProcess]:
    """A runtime with, besides the usual models, one whose template writes every message's role,
    tool name and content."""
    home = tmp_path_factory.mktemp("echo-home")
    store = populate(home, tiny_models)
    add_model(store, "echo", tiny_models["plain"], template=ECHO_TEMPLATE, params={"num_ctx": 512})
    proc = RuntimeProcess(home).start()
    yield proc
    proc.stop()


# -- 7: an error after streaming began ---------------------------------------------------------------


def test_error_mid_stream_ends_the_ndjson_stream_with_an_error_line(failing: RuntimeProcess) -> None:
    with httpx.Client(base_url=failing.url, timeout=120) as api:
        for path, body in (
            ("/api/generate", GREEDY_LONG),
            ("/api/chat", {**GREEDY_LONG, "messages": [{"role": "user", "content": "hello"}]}),
        ):
            r = api.post(path, json=body)
            assert r.status_code == 200
            items = ndjson(r)
            assert items[-1] == {"error": FAULT}, items
            assert len(items) >= 2 and all(i["done"] is False for i in items[:-1])
            # Not streamed: the same failure is a plain error status.
            whole = api.post(path, json={**body, "stream": False})
            assert whole.status_code == 500 and whole.json() == {"error": FAULT}
    log = failing.log_path.read_text()
    assert "unhandled error" not in log and "Traceback" not in log


def test_error_mid_stream_reaches_the_ollama_and_openai_packages(failing: RuntimeProcess) -> None:
    client = ollama.Client(host=failing.url)
    greedy = {"temperature": 0, "num_predict": 40}
    stream = client.generate(model="tiny-long", prompt="hello", stream=True, options=greedy)
    with pytest.raises(ollama.ResponseError, match="test fault"):
        for _ in stream:
            pass
    oa = openai.OpenAI(base_url=failing.url + "/v1", api_key="unused", max_retries=0)
    chunks = oa.chat.completions.create(
        model="tiny-long", messages=[{"role": "user", "content": "hello"}], temperature=0, max_tokens=40, stream=True
    )
    seen = []
    with pytest.raises(openai.APIError, match="test fault") as info:
        for chunk in chunks:
            seen.append(chunk)
    assert seen and seen[0].choices[0].delta.role == "assistant"
    assert info.value.body == {
        "message": "test fault: the engine failed after 3 tokens",
        "type": "api_error",
        "param": None,
        "code": None,
    }
    # The raw shape: an error event and no [DONE], for /v1/completions too.
    raw = httpx.post(
        failing.url + "/v1/completions",
        json={"model": "tiny-long", "prompt": "hello", "temperature": 0, "max_tokens": 40, "stream": True},
        timeout=120,
    )
    events = [e for e in raw.text.split("\n\n") if e]
    assert raw.status_code == 200 and all(e.startswith("data: ") for e in events)
    assert json.loads(events[-1][6:]) == {
        "error": {
            "message": "test fault: the engine failed after 3 tokens",
            "type": "api_error",
            "param": None,
            "code": None,
        }
    }
    assert "data: [DONE]" not in events and len(events) >= 2


def test_error_before_the_first_chunk_is_a_plain_http_error(runtime: RuntimeProcess) -> None:
    """Streaming or not, what fails before the first token is an HTTP status, not a 200 stream."""
    body = {"model": "tiny", "prompt": WORDS, "options": {"num_ctx": 128}, "truncate": False}
    for stream in (True, False):
        r = httpx.post(runtime.url + "/api/generate", json={**body, "stream": stream}, timeout=120)
        assert r.status_code == 400 and r.json() == {"error": "the input length exceeds the context length"}
    sse = httpx.post(
        runtime.url + "/v1/chat/completions",
        json={"model": "missing", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        timeout=60,
    )
    assert sse.status_code == 404 and sse.json()["error"]["type"] == "not_found_error"


# -- 9 and 10: prompts longer than the context ------------------------------------------------------------


@pytest.mark.parametrize("num_ctx", [4, 16, 128, 300, 512])
def test_a_long_prompt_is_cut_for_every_context_size(runtime: RuntimeProcess, num_ctx: int) -> None:
    for num_keep in (4, 0, -1, 1000):
        options = {"num_ctx": num_ctx, "num_keep": num_keep, "num_predict": 3, "temperature": 0}
        r = httpx.post(
            runtime.url + "/api/generate",
            json={"model": "tiny", "prompt": WORDS, "stream": False, "options": options},
            timeout=120,
        )
        assert r.status_code == 200, (num_ctx, num_keep, r.text)
        out = r.json()
        # Cut to leave room for the 3 tokens of the reply (at most a quarter of the context).
        room = max(1, min(3, num_ctx // 4))
        assert prompt_size(out) == num_ctx - room, (num_ctx, num_keep, out)
        assert out["eval_count"] == 3 and out["done_reason"] == "length"


def test_the_issue_case_num_ctx_128_streams_and_keeps_the_start(runtime: RuntimeProcess) -> None:
    body = {"model": "tiny-long", "prompt": WORDS, "options": {"num_ctx": 128, "temperature": 0, "num_predict": 5}}
    items = ndjson(httpx.post(runtime.url + "/api/generate", json=body, timeout=120))
    final = items[-1]
    assert final["done"] is True and prompt_size(final) == 123 and final["eval_count"] == 5
    # The context sent back starts with the kept tokens (num_keep 4) and ends with the prompt's end.
    whole = httpx.post(
        runtime.url + "/api/generate",
        json={**body, "options": {"num_ctx": 4096, "num_predict": 1}, "stream": False},
        timeout=120,
    ).json()
    cut = final["context"][: prompt_size(final)]
    full = whole["context"][: prompt_size(whole)]
    assert len(full) > 1000 and cut[:4] == full[:4] and cut[4:] == full[len(full) - 119 :]


def test_truncate_false_refuses_a_prompt_longer_than_the_context(runtime: RuntimeProcess) -> None:
    long_chat = {
        "model": "tiny",
        "messages": [{"role": "user", "content": WORDS}],
        "options": {"num_ctx": 256},
        "truncate": False,
    }
    for path, body in (
        ("/api/generate", {"model": "tiny", "prompt": WORDS, "options": {"num_ctx": 256}, "truncate": False}),
        ("/api/chat", long_chat),
    ):
        r = httpx.post(runtime.url + path, json=body, timeout=120)
        assert r.status_code == 400 and r.json() == {"error": "the input length exceeds the context length"}
        # truncate true (the default) cuts it instead.
        ok = httpx.post(runtime.url + path, json={**body, "truncate": True, "stream": False}, timeout=120)
        assert ok.status_code == 200 and ok.json()["prompt_eval_count"] < 256
    # A prompt that fits is not affected, and truncate must be a boolean.
    fits = httpx.post(
        runtime.url + "/api/generate",
        json={"model": "tiny", "prompt": "hello", "truncate": False, "stream": False, "options": {"num_predict": 2}},
        timeout=60,
    )
    assert fits.status_code == 200
    bad = httpx.post(runtime.url + "/api/generate", json={"model": "tiny", "prompt": "x", "truncate": "no"})
    assert bad.status_code == 400


def test_shift_lets_a_reply_outgrow_the_context_and_shift_false_stops_it(runtime: RuntimeProcess) -> None:
    # More than llama.cpp's own context (it rounds 64 up to 256): only shifting gets this far.
    options = {"num_ctx": 64, "num_predict": 300, "temperature": 0}
    body = {"model": "tiny-long", "prompt": "hello", "stream": False, "options": options}
    shifted = httpx.post(runtime.url + "/api/generate", json=body, timeout=120).json()
    assert shifted["eval_count"] == 300 and shifted["done_reason"] == "length"
    stopped = httpx.post(runtime.url + "/api/generate", json={**body, "shift": False}, timeout=120).json()
    # The prompt and the reply fill the 64 tokens of the context, then it stops.
    assert stopped["done_reason"] == "length"
    assert prompt_size(stopped) + stopped["eval_count"] == 64 + 1
    assert shifted["response"].startswith(stopped["response"][:-2])  # the last bytes may end mid-character
    # Unloaded first, so that nothing is cached: the chat's prompt_eval_count is its whole prompt.
    httpx.post(runtime.url + "/api/generate", json={"model": "tiny-long", "keep_alive": 0}, timeout=60)
    chat = httpx.post(
        runtime.url + "/api/chat",
        json={"model": "tiny-long", "messages": [{"role": "user", "content": "hello"}], "stream": False,
              "options": options, "shift": False},
        timeout=120,
    ).json()  # fmt: skip
    assert chat["prompt_eval_count"] + chat["eval_count"] == 65


def test_chat_drops_the_oldest_messages_that_do_not_fit(runtime: RuntimeProcess) -> None:
    """As Ollama: the newest turns that fit the context, with the system messages before the
    cut and always the last message; truncate:false keeps everything."""
    history: list[dict] = [{"role": "system", "content": "Be brief."}]  # type: ignore[type-arg]
    for i in range(6):
        history += [
            {"role": "user", "content": f"question {i} " + "word " * 8},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    history.append({"role": "user", "content": "last question"})

    def chat(**extra: object) -> httpx.Response:
        body = {"model": "tiny-go", "messages": history, "options": {"num_ctx": 256, "num_predict": 1}}
        return httpx.post(runtime.url + "/api/chat", json={**body, **extra}, timeout=120)

    text = chat(_debug_render_only=True).json()["_debug_info"]["rendered_template"]
    assert text.startswith("<|system|>Be brief.<|end|>") and text.endswith("<|user|>last question<|end|><|assistant|>")
    kept = [i for i in range(6) if f"question {i} " in text]
    assert kept and kept == list(range(kept[0], 6)) and kept[0] > 0, text  # the newest turns, in one piece
    assert "seed question" not in text and "You are a test model." not in text
    run = chat(stream=False).json()
    assert run["prompt_eval_count"] <= 256
    everything = chat(_debug_render_only=True, truncate=False).json()["_debug_info"]["rendered_template"]
    assert all(f"question {i} " in everything for i in range(6)) and "seed question" in everything
    refused = chat(truncate=False)
    assert refused.status_code == 400 and refused.json() == {"error": "the input length exceeds the context length"}


# -- smaller ---------------------------------------------------------------------------------------------


def test_system_prompt_rule_looks_at_the_request_first_message(runtime: RuntimeProcess) -> None:
    """tiny-go has a SYSTEM and MESSAGE seeds: a request that starts with its own system message
    replaces the model's, even though the seeds come first in the conversation (§8.4)."""

    def rendered(messages: list[dict]) -> str:  # type: ignore[type-arg]
        r = httpx.post(
            runtime.url + "/api/chat",
            json={"model": "tiny-go", "messages": messages, "_debug_render_only": True},
            timeout=60,
        )
        return str(r.json()["_debug_info"]["rendered_template"])

    mine = rendered([{"role": "system", "content": "Mine."}, {"role": "user", "content": "q"}])
    assert mine == (
        "<|system|>Mine.<|end|><|user|>seed question<|end|><|assistant|>seed answer<|end|><|user|>q<|end|><|assistant|>"
    )
    theirs = rendered([{"role": "user", "content": "q"}])
    assert theirs.startswith("<|system|>You are a test model.<|end|>")


def test_status_options_tags_and_show(runtime: RuntimeProcess) -> None:
    url = runtime.url
    assert httpx.get(url + "/api/status").json() == {"cloud": {"disabled": True, "source": "none"}}
    plain = httpx.options(url + "/api/chat")
    assert plain.status_code == 204 and plain.content == b""
    preflight = httpx.options(
        url + "/api/chat", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 204 and preflight.content == b""
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert httpx.options(url + "/", headers={"Origin": "https://evil.example.com"}).status_code == 403

    tags = {m["name"]: m for m in httpx.get(url + "/api/tags").json()["models"]}
    assert tags["tiny:latest"]["capabilities"] == ["completion"]
    assert tags["tiny-embed:latest"]["capabilities"] == ["embedding"]
    assert tags["tiny-vision:latest"]["capabilities"] == ["completion", "vision"]

    show = httpx.post(url + "/api/show", json={"model": "tiny"}).json()
    # float32 metadata as Go prints it (the shortest decimal of the float32), not widened.
    assert show["model_info"]["llama.attention.layer_norm_rms_epsilon"] == 1e-05
    assert "1e-05" in httpx.post(url + "/api/show", json={"model": "tiny"}).text
    assert "projector_info" not in show and "requires" not in show
    vision = httpx.post(url + "/api/show", json={"model": "tiny-vision"}).json()
    info = vision["projector_info"]
    assert info["general.architecture"] == "clip" and info["clip.vision.image_size"] == 32
    assert info["clip.vision.attention.layer_norm_epsilon"] == 1e-06
    assert info["clip.vision.image_mean"] == [0.5, 0.5, 0.5]


def test_show_requires(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    from client.config import load
    from client.store import Store
    from formats import mediatypes as mt
    from formats.manifest import Descriptor, Manifest
    from formats.names import ModelName

    home = tmp_path / "home"
    store = Store(load({"HANGAR_HOME": str(home)}).models)
    store.ensure()
    digest, size = store.add_blob_file(tiny_models["plain"])
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "requires": "0.14.0"}).encode()
    cd, cn = store.add_blob_bytes(config)
    manifest = Manifest.build(Descriptor(mt.DOCKER_CONFIG, cd, cn), [Descriptor(mt.OLLAMA_MODEL, digest, size)])
    store.put_manifest(ModelName.parse("needs-new"), manifest.raw)
    rt = RuntimeProcess(home).start()
    try:
        assert httpx.post(rt.url + "/api/show", json={"model": "needs-new"}).json()["requires"] == "0.14.0"
    finally:
        rt.stop()


def test_progress_objects_omit_zero_totals() -> None:
    from client.progress import Progress

    assert Progress("pulling manifest", None, 0, 0).to_json() == {"status": "pulling manifest"}
    assert Progress("pushing 1", "sha256:ab", 10, 0).to_json() == {
        "status": "pushing 1",
        "digest": "sha256:ab",
        "total": 10,
    }


def test_openai_text_parts_and_tool_names_reach_the_template(echo: RuntimeProcess) -> None:
    """Token counts of the same conversation sent natively and through /v1: the text parts and
    the tool name found from ``tool_call_id`` must reach the template."""

    def native(messages: list[dict]) -> tuple[str, int]:  # type: ignore[type-arg]
        body = {"model": "echo", "messages": messages, "options": {"num_predict": 1}}
        rendered = httpx.post(echo.url + "/api/chat", json={**body, "_debug_render_only": True}).json()
        # Unloaded first, so that nothing is cached: prompt_eval_count is the whole prompt.
        httpx.post(echo.url + "/api/chat", json={"model": "echo", "keep_alive": 0}, timeout=60)
        count = httpx.post(echo.url + "/api/chat", json={**body, "stream": False}, timeout=60).json()
        return rendered["_debug_info"]["rendered_template"], count["prompt_eval_count"]

    oa = openai.OpenAI(base_url=echo.url + "/v1", api_key="unused")

    def via_openai(messages: list[dict]) -> int:  # type: ignore[type-arg]
        r = oa.chat.completions.create(model="echo", messages=messages, max_tokens=1)  # type: ignore[arg-type]
        assert r.usage is not None
        return r.usage.prompt_tokens

    parts = [{"role": "user", "content": [{"type": "text", "text": "first part"}, {"type": "text", "text": "second"}]}]
    text, count = native([{"role": "user", "content": "first part"}, {"role": "user", "content": "second"}])
    assert text == "[user]first part\n\nsecond[assistant]"  # consecutive user messages are joined
    assert via_openai(parts) == count

    call = {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "cold"},
    ]
    text, count = native(
        [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather"}}]},
            {"role": "tool", "content": "cold", "tool_name": "get_weather"},
        ]
    )
    assert "[tool:get_weather]cold" in text
    assert via_openai(history) == count


def test_openai_input_audio_top_p_and_completions(echo: RuntimeProcess) -> None:
    url = echo.url
    audio = httpx.post(
        url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}
            ],
        },
    )
    assert audio.status_code == 400 and audio.json()["error"]["message"] == '"tiny" does not support audio input'
    malformed = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
    )
    assert malformed.status_code == 400 and "input_audio" in malformed.json()["error"]["message"]

    oa = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    # top_p 0 is kept on chat: only the likeliest token survives, whatever the temperature and seed.
    answers = {
        oa.chat.completions.create(
            model="tiny-long",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=12,
            top_p=0,
            temperature=1.5,
            seed=seed,
        )
        .choices[0]
        .message.content
        for seed in (1, 2, 3)
    }
    assert len(answers) == 1

    c = oa.completions.create(model="tiny-long", prompt="hello", max_tokens=4, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None and c.usage is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == 4 == c.usage.completion_tokens
    assert lp.top_logprobs is not None and all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset is not None and lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    zero = oa.completions.create(model="tiny-long", prompt="hello", max_tokens=2, temperature=0, logprobs=0)
    assert zero.choices[0].logprobs is not None and zero.choices[0].logprobs.top_logprobs is None
    assert oa.completions.create(model="tiny-long", prompt="hello", max_tokens=2).choices[0].logprobs is None
    streamed = list(
        oa.completions.create(model="tiny-long", prompt="hello", max_tokens=4, temperature=0, logprobs=1, stream=True)
    )
    counts = [len(s.choices[0].logprobs.tokens or []) for s in streamed if s.choices and s.choices[0].logprobs]
    assert sum(counts) == 4

    # An empty prompt loads the model and answers an empty completion.
    httpx.post(url + "/api/generate", json={"model": "tiny-greedy", "keep_alive": 0})
    empty = oa.completions.create(model="tiny-greedy", prompt="")
    assert empty.choices[0].text == "" and empty.usage is not None and empty.usage.completion_tokens == 0
    assert "tiny-greedy:latest" in [m["name"] for m in httpx.get(url + "/api/ps").json()["models"]]
