"""Thinking models (#18 item 8, §8.3–8.4): the ``thinking`` capability (from the template or the
config), ``think`` on, off and by level, the output split into ``thinking`` and ``content`` while
streaming, structured output after the thinking, through ``/api/chat``, ``/api/generate``,
``/v1/chat/completions`` (the ``ollama`` and ``openai`` packages) and ``hangar run``.

The model is real llama.cpp: ``tests/tinymodels.write_tiny_thinker`` writes a fixed
``<think>The user said hi.</think>\\nHello!`` after ``<|assistant|>`` (its closing tag in two
tokens), and just ``Hello!`` after ``</think>``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from client.config import load
from client.store import Store
from formats.thinking import (
    HarmonyParser,
    Think,
    ThinkError,
    ThinkingParser,
    model_thinks,
    openai_think,
    request_think,
    tags_for,
)
from runtime.prompts import Message, PromptTemplate
from tests.runtime.test_cli import Terminal, cli_env, hangar
from tests.servers import RuntimeProcess
from tests.tinymodels import (
    THINKER_ANSWER,
    THINKER_CALL,
    THINKER_OUTPUT,
    THINKER_THINKING,
    add_model,
    write_tiny_thinker,
)

# A Qwen3-style template: earlier thinking written back, thinking turned off by an empty block.
THINK_TEMPLATE = (
    "{{- if .ThinkLevel }}<|system|>Reasoning: {{ .ThinkLevel }}\n{{ end }}"
    "{{- range .Messages }}<|{{ .Role }}|>"
    "{{- if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}\n"
    "{{ end }}<|assistant|>{{ if and .IsThinkSet (not .Think) }}<think></think>{{ end }}"
)
TOOLS_TEMPLATE = (
    "{{- if .Tools }}<|system|>{{ json .Tools }}\n{{ end }}"
    "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}\n{{ end }}"
    "<|assistant|>{{ if not .Think }}<think></think>{{ end }}"
)
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
PLAIN_TEMPLATE = "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}\n{{ end }}<|assistant|>"
HI: Any = [{"role": "user", "content": "hi"}]  # Any: the openai package types its messages


# -- the parser and the rules, in process ------------------------------------------------------------


@pytest.mark.parametrize("started", [False, True])
def test_parser_splits_at_every_chunking(started: bool) -> None:
    """Whatever the token boundaries (tags split anywhere), the same thinking and content."""
    text = "  <think>\n The user said hi. \n</think>\n\nHello <b>!</b>"
    if started:
        text = text.split("<think>", 1)[1]
    for cut in range(len(text) + 1):
        for step in (1, 3):
            parser = ThinkingParser(started=started)
            thinking, content = "", ""
            pieces = [text[:cut]] + [text[i : i + step] for i in range(cut, len(text), step)]
            for piece in pieces:
                t, c = parser.feed(piece)
                assert not (c and not parser.thinking_done)  # no content before the closing tag
                thinking, content = thinking + t, content + c
            t, c = parser.finish()
            assert (thinking + t, content + c) == ("The user said hi.", "Hello <b>!</b>"), (cut, step)


def test_parser_without_thinking_and_unfinished_thinking() -> None:
    parser = ThinkingParser()
    assert parser.feed("  <th") == ("", "")  # may still be the opening tag
    assert parser.feed("is is content") == ("", "  <this is content")
    assert parser.finish() == ("", "")
    unfinished = ThinkingParser("[THINK]", "[/THINK]")
    assert unfinished.feed("[THINK]still going [/TH") == ("still going", "")
    assert unfinished.finish() == (" [/TH", "")  # what was held back is thinking after all
    assert ThinkingParser().feed("<think>a</think>") == ("a", "")


def _harmony(text: str, step: int, cut: int) -> tuple[str, str, list[dict[str, Any]]]:
    parser = HarmonyParser()
    thinking, content = "", ""
    for piece in [text[:cut]] + [text[i : i + step] for i in range(cut, len(text), step)]:
        t, c = parser.feed(piece)
        thinking, content = thinking + t, content + c
    t, c = parser.finish()
    return thinking + t, content + c, parser.tool_calls


def test_harmony_channels_at_every_chunking() -> None:
    """gpt-oss's output as llama.cpp writes it (<|end|> is a control token: not in the text)."""
    answer = "<|channel|>analysis<|message|>User says hi.<|start|>assistant<|channel|>final<|message|>Hello <b>x</b>!"
    call = (
        "<|channel|>analysis<|message|>Need the weather.<|start|>assistant<|channel|>commentary "
        'to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}'
    )
    for cut in range(len(call) + 1):
        for step in (1, 4):
            assert _harmony(answer, step, min(cut, len(answer))) == ("User says hi.", "Hello <b>x</b>!", [])
            weather = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            assert _harmony(call, step, cut) == ("Need the weather.", "", [weather])
    assert _harmony("Just text", 3, 0) == ("", "Just text", [])
    parser = HarmonyParser()
    parser.feed("<|channel|>analysis<|message|>Hm")
    assert not parser.thinking_done
    parser.feed("m<|start|>assistant<|channel|>fin")
    assert parser.thinking_done
    restart = parser.restart("<|channel|>analysis<|message|>Hmm<|start|>assistant<|channel|>fin")
    assert restart == "<|channel|>analysis<|message|>Hmm<|end|><|start|>assistant<|channel|>final<|message|>"
    assert parser.feed('{"a": 1}') == ("", '{"a": 1}')  # the grammar's pass writes the final body


def test_think_values_and_defaults() -> None:
    thinking, plain = ["completion", "thinking"], ["completion"]
    assert request_think(None, thinking, "m") == Think(on=True, explicit=True)  # Ollama's default
    assert request_think(None, plain, "m") == Think()
    assert request_think(False, plain, "m") == Think(on=False, explicit=True)
    assert request_think("low", thinking, "m") == Think(on=True, level="low", explicit=True)
    assert Think(on=True).template_values() == {"Think": True, "ThinkLevel": "medium", "IsThinkSet": False}
    with pytest.raises(ThinkError, match=r'^"m" does not support thinking$'):
        request_think(True, plain, "m")
    with pytest.raises(ThinkError, match=r'^"m" does not support thinking$'):
        request_think("high", plain, "m")
    with pytest.raises(ThinkError, match='invalid think value: "extreme"'):
        request_think("extreme", thinking, "m")
    with pytest.raises(ThinkError, match="think must be a boolean or a string"):
        request_think(1, thinking, "m")
    assert openai_think({}) is None
    assert openai_think({"reasoning_effort": "none"}) is False
    assert openai_think({"reasoning_effort": "minimal"}) == "low"
    assert openai_think({"reasoning": {"effort": "xhigh"}}) == "max"
    with pytest.raises(ThinkError, match="invalid reasoning value"):
        openai_think({"reasoning_effort": "lots"})


def test_which_models_think_and_their_tags() -> None:
    assert model_thinks({}, THINK_TEMPLATE)
    assert model_thinks({}, "{{ if .Think }}x{{ end }}")
    assert model_thinks({}, "{{ range .Messages }}<reasoning>{{ .Thinking }}</reasoning>{{ end }}")
    assert not model_thinks({}, PLAIN_TEMPLATE)
    assert model_thinks({"capabilities": ["completion", "thinking"]}, PLAIN_TEMPLATE)
    assert model_thinks({"parser": "qwen3"}, PLAIN_TEMPLATE)
    assert model_thinks({"parser": "harmony"}, PLAIN_TEMPLATE)
    assert model_thinks({}, PLAIN_TEMPLATE, family="gpt-oss") and model_thinks({"model_family": "gptoss"}, None)
    assert not model_thinks({"parser": "no-such-parser"}, PLAIN_TEMPLATE)
    assert model_thinks({}, None, "{% if enable_thinking %}<think>{% endif %}")
    assert tags_for({}, "{{ range .Messages }}<reasoning>{{ .Thinking }}</reasoning>{{ end }}") == (
        "<reasoning>",
        "</reasoning>",
    )
    assert tags_for({"parser": "ministral"}, None) == ("[THINK]", "[/THINK]")
    assert tags_for({}, PLAIN_TEMPLATE) == ("<think>", "</think>")


def test_templates_see_think_values_and_earlier_thinking() -> None:
    template = PromptTemplate(THINK_TEMPLATE, None)
    convo = [Message("user", "q"), Message("assistant", "a", thinking="mulled"), Message("user", "q2")]
    on = template.render(convo, think=Think(on=True, explicit=True))
    assert (
        on == "<|system|>Reasoning: medium\n<|user|>q\n<|assistant|><think>mulled</think>a\n<|user|>q2\n<|assistant|>"
    )
    off = template.render(convo[:1], think=Think(on=False, explicit=True))
    assert off == "<|user|>q\n<|assistant|><think></think>"
    assert template.render(convo[:1], think=Think(on=True, level="high", explicit=True)).startswith(
        "<|system|>Reasoning: high\n"
    )
    legacy = PromptTemplate("{{ if .Think }}T{{ end }}{{ .Prompt }}", None)
    assert legacy.render([Message("user", "x")], think=Think(on=True)) == "Tx"
    jinja = PromptTemplate(
        None,
        "{% for m in messages %}{{ m.reasoning_content }}|{{ m.content }}{% endfor %}"
        "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
        "{{ reasoning_effort }}",
    )
    assert jinja.render([Message("assistant", "a", thinking="r")], think=Think(on=False, explicit=True)) == (
        "r|a<think></think>"
    )
    assert jinja.render([Message("user", "a")], think=Think(on=True, level="low", explicit=True)).endswith("low")


# -- against hangar serve -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    home = tmp_path_factory.mktemp("thinking-home")
    gguf = write_tiny_thinker(tmp_path_factory.mktemp("thinker") / "thinker.gguf")
    store = Store(load({"HANGAR_HOME": str(home)}).models)
    params = {"num_ctx": 256}
    add_model(store, "thinker", gguf, template=THINK_TEMPLATE, params=params)
    add_model(
        store, "thinker-listed", gguf, template=PLAIN_TEMPLATE, params=params, config={"capabilities": ["thinking"]}
    )
    # A built-in parser names the model's tags; its template opens the thinking itself.
    add_model(
        store, "thinker-parser", gguf, template=PLAIN_TEMPLATE + "<think>", params=params, config={"parser": "qwen3"}
    )
    add_model(store, "thinker-plain", gguf, template=PLAIN_TEMPLATE, params=params)
    add_model(store, "thinker-harmony", gguf, template=PLAIN_TEMPLATE, params=params, config={"parser": "harmony"})
    caller = write_tiny_thinker(tmp_path_factory.mktemp("caller") / "caller.gguf", answer=THINKER_CALL)
    add_model(store, "thinker-tools", caller, template=TOOLS_TEMPLATE, params=params)
    proc = RuntimeProcess(home).start()
    yield proc
    proc.stop()


@pytest.fixture
def api(served: RuntimeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=120) as c:
        yield c


def lines(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def test_capabilities_from_the_template_the_config_and_the_parser(api: httpx.Client) -> None:
    for model, thinks in (
        ("thinker", True),
        ("thinker-listed", True),
        ("thinker-parser", True),
        ("thinker-plain", False),
    ):
        caps = api.post("/api/show", json={"model": model}).json()["capabilities"]
        assert ("thinking" in caps) is thinks, (model, caps)
        assert caps.count("thinking") <= 1
    # A harmony model's output is read for channels; text without them (this model's) is content.
    assert "thinking" in api.post("/api/show", json={"model": "thinker-harmony"}).json()["capabilities"]
    r = api.post("/api/chat", json={"model": "thinker-harmony", "messages": HI, "stream": False}).json()
    assert r["message"] == {"role": "assistant", "content": THINKER_OUTPUT}


def test_chat_thinks_by_default_streaming_and_not(api: httpx.Client) -> None:
    body = {"model": "thinker", "messages": HI}
    whole = api.post("/api/chat", json={**body, "stream": False}).json()
    assert whole["message"] == {"role": "assistant", "content": THINKER_ANSWER, "thinking": THINKER_THINKING}
    streamed = lines(api.post("/api/chat", json=body))
    assert "".join(i["message"].get("thinking", "") for i in streamed) == THINKER_THINKING
    assert "".join(i["message"]["content"] for i in streamed) == THINKER_ANSWER
    thinking_lines = [i for i in streamed if i["message"].get("thinking")]
    assert len(thinking_lines) >= 4 and all(i["message"]["content"] == "" for i in thinking_lines)
    assert "thinking" not in streamed[-1]["message"] and streamed[-1]["done"]
    # The tags never reach the client, though the closing one came in two tokens.
    assert not any("<" in i["message"]["content"] + i["message"].get("thinking", "") for i in streamed)


def test_think_off_and_by_level(api: httpx.Client) -> None:
    off = {"model": "thinker", "messages": HI, "think": False}
    rendered = api.post("/api/chat", json={**off, "_debug_render_only": True}).json()["_debug_info"]
    assert rendered["rendered_template"].endswith("<|assistant|><think></think>")
    r = api.post("/api/chat", json={**off, "stream": False}).json()
    assert r["message"] == {"role": "assistant", "content": THINKER_ANSWER}
    assert "".join(i["message"]["content"] for i in lines(api.post("/api/chat", json=off))) == THINKER_ANSWER
    for level in ("low", "medium", "high", "max"):
        body = {"model": "thinker", "messages": HI, "think": level}
        rendered = api.post("/api/chat", json={**body, "_debug_render_only": True}).json()["_debug_info"]
        assert rendered["rendered_template"].startswith(f"<|system|>Reasoning: {level}\n")
        r = api.post("/api/chat", json={**body, "stream": False}).json()
        assert (r["message"]["thinking"], r["message"]["content"]) == (THINKER_THINKING, THINKER_ANSWER)


def test_think_errors(api: httpx.Client) -> None:
    for think in (True, "high"):
        for path, extra in (("/api/chat", {"messages": HI}), ("/api/generate", {"prompt": "hi"})):
            r = api.post(path, json={"model": "thinker-plain", "think": think, **extra})
            assert r.status_code == 400 and r.json() == {"error": '"thinker-plain" does not support thinking'}
    r = api.post("/api/chat", json={"model": "thinker", "messages": HI, "think": "extreme"})
    assert r.status_code == 400 and r.json()["error"].startswith('invalid think value: "extreme"')
    r = api.post("/api/chat", json={"model": "thinker-plain", "messages": HI, "think": False, "stream": False})
    assert r.status_code == 200  # false is fine anywhere; the model's raw text is the content
    assert r.json()["message"] == {"role": "assistant", "content": THINKER_OUTPUT}


def test_generate_thinks_streaming_and_not(api: httpx.Client) -> None:
    body = {"model": "thinker", "prompt": "hi"}
    whole = api.post("/api/generate", json={**body, "stream": False}).json()
    assert (whole["thinking"], whole["response"]) == (THINKER_THINKING, THINKER_ANSWER)
    streamed = lines(api.post("/api/generate", json=body))
    assert "".join(i.get("thinking", "") for i in streamed) == THINKER_THINKING
    assert "".join(i["response"] for i in streamed) == THINKER_ANSWER
    assert all("thinking" not in i for i in streamed if i["response"])
    off = api.post("/api/generate", json={**body, "think": False, "stream": False}).json()
    assert off["response"] == THINKER_ANSWER and "thinking" not in off


def test_config_listed_and_parser_models(api: httpx.Client) -> None:
    r = api.post("/api/chat", json={"model": "thinker-listed", "messages": HI, "stream": False}).json()
    assert (r["message"]["thinking"], r["message"]["content"]) == (THINKER_THINKING, THINKER_ANSWER)
    # Its template cannot turn thinking off, so the model thinks anyway: unsplit, as in Ollama.
    r = api.post("/api/chat", json={"model": "thinker-listed", "messages": HI, "stream": False, "think": False}).json()
    assert r["message"]["content"] == THINKER_OUTPUT and "thinking" not in r["message"]
    # The prompt ends inside the thinking: the output starts with it, no opening tag.
    streamed = lines(api.post("/api/generate", json={"model": "thinker-parser", "prompt": "hi"}))
    assert "".join(i.get("thinking", "") for i in streamed) == THINKER_THINKING
    assert "".join(i["response"] for i in streamed) == THINKER_ANSWER


def test_thinking_then_a_tool_call(api: httpx.Client, served: RuntimeProcess) -> None:
    """The parser separates the thinking, then the content is read for tool calls."""
    body = {"model": "thinker-tools", "messages": HI, "tools": TOOLS}
    caps = api.post("/api/show", json={"model": "thinker-tools"}).json()["capabilities"]
    assert "tools" in caps and "thinking" in caps
    r = api.post("/api/chat", json={**body, "stream": False}).json()
    assert r["message"]["thinking"] == THINKER_THINKING and r["message"]["content"] == ""
    call = {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert [c["function"] for c in r["message"]["tool_calls"]] == [call]
    streamed = lines(api.post("/api/chat", json=body))
    assert "".join(i["message"].get("thinking", "") for i in streamed) == THINKER_THINKING
    assert "".join(i["message"]["content"] for i in streamed) == ""  # the call was held back
    assert [c["function"] for c in streamed[-1]["message"]["tool_calls"]] == [call]
    oa = openai.OpenAI(base_url=served.url + "/v1", api_key="unused")
    done = oa.chat.completions.create(model="thinker-tools", messages=HI, tools=TOOLS)
    assert done.choices[0].finish_reason == "tool_calls"
    assert (done.choices[0].message.model_extra or {})["reasoning"] == THINKER_THINKING
    called: Any = done.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in called] == [("get_weather", {"city": "Paris"})]


def test_structured_output_applies_after_the_thinking(api: httpx.Client) -> None:
    schema = {"type": "object", "properties": {"answer": {"enum": ["Hello"]}}, "required": ["answer"]}
    body = {"model": "thinker", "messages": HI, "format": schema, "options": {"num_predict": 60}}
    r = api.post("/api/chat", json={**body, "stream": False}).json()
    # Constrained from the start, the thinking could not have been written: it is JSON-free text.
    assert r["message"]["thinking"] == THINKER_THINKING
    assert json.loads(r["message"]["content"]) == {"answer": "Hello"}
    assert r["eval_count"] > len(THINKER_THINKING.split())  # both passes counted
    streamed = lines(api.post("/api/chat", json=body))
    assert "".join(i["message"].get("thinking", "") for i in streamed) == THINKER_THINKING
    assert json.loads("".join(i["message"]["content"] for i in streamed)) == {"answer": "Hello"}
    off = api.post("/api/chat", json={**body, "stream": False, "think": False}).json()
    assert json.loads(off["message"]["content"]) == {"answer": "Hello"} and "thinking" not in off["message"]


def test_earlier_thinking_reaches_the_template(api: httpx.Client) -> None:
    history = [*HI, {"role": "assistant", "content": "Hello!", "thinking": "mulled"}, {"role": "user", "content": "x"}]
    r = api.post("/api/chat", json={"model": "thinker", "messages": history, "_debug_render_only": True})
    assert "<|assistant|><think>mulled</think>Hello!\n" in r.json()["_debug_info"]["rendered_template"]
    bad = api.post(
        "/api/chat", json={"model": "thinker", "messages": [{"role": "user", "content": "x", "thinking": 1}]}
    )
    assert bad.status_code == 400


def test_the_ollama_package(served: RuntimeProcess) -> None:
    oc = ollama.Client(host=served.url)
    r = oc.chat(model="thinker", messages=HI, think=True)
    assert (r.message.thinking, r.message.content) == (THINKER_THINKING, THINKER_ANSWER)
    parts = list(oc.chat(model="thinker", messages=HI, think="low", stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == THINKER_THINKING
    assert "".join(p.message.content or "" for p in parts) == THINKER_ANSWER
    g = oc.generate(model="thinker", prompt="hi", think=False)
    assert g.response == THINKER_ANSWER and not g.thinking
    g = oc.generate(model="thinker", prompt="hi")
    assert (g.thinking, g.response) == (THINKER_THINKING, THINKER_ANSWER)
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model="thinker-plain", messages=HI, think=True)
    assert e.value.status_code == 400 and e.value.error == '"thinker-plain" does not support thinking'


def test_the_openai_package(served: RuntimeProcess) -> None:
    oa = openai.OpenAI(base_url=served.url + "/v1", api_key="unused")
    r = oa.chat.completions.create(model="thinker", messages=HI)
    message = r.choices[0].message
    assert message.content == THINKER_ANSWER and (message.model_extra or {})["reasoning"] == THINKER_THINKING
    chunks = list(oa.chat.completions.create(model="thinker", messages=HI, stream=True, reasoning_effort="high"))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    reasoning = [(d.model_extra or {}).get("reasoning") or "" for d in deltas]
    assert "".join(reasoning) == THINKER_THINKING
    assert "".join(d.content or "" for d in deltas) == THINKER_ANSWER
    assert all(not (r and d.content) for r, d in zip(reasoning, deltas, strict=True))  # reasoning in chunks of its own
    off = oa.chat.completions.create(model="thinker", messages=HI, reasoning_effort="none")
    assert off.choices[0].message.content == THINKER_ANSWER and "reasoning" not in (
        off.choices[0].message.model_extra or {}
    )
    with pytest.raises(openai.BadRequestError, match="invalid reasoning value"):
        oa.chat.completions.create(model="thinker", messages=HI, reasoning_effort="lots")  # type: ignore[call-overload]
    with pytest.raises(openai.BadRequestError, match="does not support thinking"):
        oa.chat.completions.create(model="thinker-plain", messages=HI, reasoning_effort="low")
    # Earlier reasoning is sent back as `reasoning` and reaches the template (raw shape: the SDK's
    # types do not name the field).
    history = [*HI, {"role": "assistant", "content": "Hello!", "reasoning": "mulled"}, {"role": "user", "content": "x"}]
    raw = httpx.post(served.url + "/v1/chat/completions", json={"model": "thinker", "messages": history}, timeout=120)
    assert raw.status_code == 200 and raw.json()["choices"][0]["message"]["reasoning"] == THINKER_THINKING
    completion = oa.completions.create(model="thinker", prompt="hi")
    assert completion.choices[0].text == THINKER_ANSWER


def test_hangar_run(served: RuntimeProcess, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "cli-home", f"127.0.0.1:{served.port}")
    r = hangar(env, "run", "thinker", "hi")
    assert r.stdout == THINKER_ANSWER + "\n"  # stdout holds just the answer
    assert f"Thinking...\n{THINKER_THINKING}\n...done thinking.\n\n" in r.stderr
    hidden = hangar(env, "run", "--hidethinking", "thinker", "hi")
    assert hidden.stdout == THINKER_ANSWER + "\n" and "Thinking" not in hidden.stderr
    off = hangar(env, "run", "--think=false", "thinker", "hi")
    assert off.stdout == THINKER_ANSWER + "\n" and "Thinking" not in off.stderr
    for flags in (["--think=high"], ["--think"]):  # a bare --think leaves the prompt alone
        r = hangar(env, "run", "thinker", *flags, "hi", "there")
        assert r.stdout == THINKER_ANSWER + "\n" and THINKER_THINKING in r.stderr
    refused = hangar(env, "run", "thinker-plain", "--think", "hi", check=False)
    assert refused.returncode == 1 and '"thinker-plain" does not support thinking' in refused.stderr
    plain = hangar(env, "run", "thinker-plain", "hi")
    assert plain.stdout == THINKER_OUTPUT + "\n"


def test_hangar_run_interactive(served: RuntimeProcess, tmp_path: Path) -> None:
    term = Terminal(cli_env(tmp_path / "cli-home", f"127.0.0.1:{served.port}"), "run", "thinker")
    try:
        term.expect("Send a message (/? for help)\n")
        term.expect(">>> ")
        term.send("hi")
        assert term.expect(">>> ").startswith(
            f"Thinking...\n{THINKER_THINKING}\n...done thinking.\n\n{THINKER_ANSWER}\n"
        )
        term.send("/set nothink")
        assert "Set 'nothink' mode." in term.expect(">>> ")
        term.send("and again")
        assert term.expect(">>> ") == f"{THINKER_ANSWER}\n\n>>> "
        term.send("/set think high")
        assert "Set 'think' mode." in term.expect(">>> ")
        term.send("once more")
        assert THINKER_THINKING in term.expect(">>> ")
        term.send("/bye")
        assert term.proc.wait(30) == 0
    finally:
        term.close()


def test_created_models_think_by_parser_or_info(api: httpx.Client) -> None:
    """PARSER (the config's ``parser``) and /api/create's ``info.capabilities`` make a model a
    thinking one; a child inherits them from its parent."""
    for name, extra in (
        ("made/parsed", {"from": "thinker-plain", "parser": "qwen3"}),
        ("made/listed", {"from": "thinker-plain", "info": {"capabilities": ["completion", "thinking"]}}),
        ("made/child", {"from": "thinker-listed"}),
    ):
        created = api.post("/api/create", json={"model": name, "stream": False, **extra})
        assert created.status_code == 200, created.text
        assert "thinking" in api.post("/api/show", json={"model": name}).json()["capabilities"], name
        r = api.post("/api/chat", json={"model": name, "messages": HI, "stream": False}).json()
        assert (r["message"].get("thinking"), r["message"]["content"]) == (THINKER_THINKING, THINKER_ANSWER), name
