"""Property-based fuzzing of the runtime's inputs (#16): GGUF files cut, overwritten and lying
about their sizes and counts (the header reader raises GGUFError and nothing else, in bounded
time); Go templates and Modelfiles of arbitrary text (an error, never a crash); and the JSON
bodies of /api/chat, /api/generate, /api/embed, /api/show and /api/create against a real
``hangar serve`` (never a 5xx; the daemon still answers afterwards)."""

from __future__ import annotations

import contextlib
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from formats.gguf import GGUFError, read_header
from formats.gotemplate import Template, TemplateError
from formats.modelfile import ModelfileError, parse
from tests.conftest import populate
from tests.fuzz.test_registry_inputs import fuzz
from tests.servers import RuntimeProcess


@pytest.fixture(scope="module")
def gguf_bytes(tiny_models: dict[str, Path]) -> bytes:
    return tiny_models["chat"].read_bytes()[: 1 << 20]  # the header and the first tensors


@fuzz
@given(
    cut=st.integers(0, 1 << 20),
    writes=st.lists(st.tuples(st.integers(0, 4096), st.binary(min_size=1, max_size=8)), max_size=6),
    count=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_gguf_headers(gguf_bytes: bytes, tmp_path_factory: pytest.TempPathFactory, cut: int, writes, count) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(gguf_bytes[:cut])
    for offset, patch in writes:
        data[offset : offset + len(patch)] = patch
    if count is not None and len(data) >= 24:
        data[8:16] = struct.pack("<Q", count)  # the tensor count, lying
    path = tmp_path_factory.mktemp("gguf") / "fuzzed.gguf"
    path.write_bytes(bytes(data))
    started = time.monotonic()
    with contextlib.suppress(GGUFError):
        read_header(path)
    assert time.monotonic() - started < 5


go_pieces = st.sampled_from(
    ["{{", "}}", "{{ .Prompt }}", "{{ range .Messages }}", "{{ end }}", "{{ if .System }}", "{{ else }}",
     "{{ template \"x\" }}", "{{ define \"x\" }}", "{{ .Messages }}", "{{ len . }}", "{{ index .Messages 5 }}",
     "{{ slice .Prompt 1 2 }}", "{{ json . }}", "{{- ", " -}}", "{{ $x := 1 }}", "{{ $x }}", "{{ ( }}", "\"", "|",
     "{{ .Missing.Deeper }}", "{{ printf \"%s\" . }}", "{{ with .Tools }}", "{{/* */}}", "text"]
)  # fmt: skip


@fuzz
@given(pieces=st.lists(go_pieces | st.text(max_size=10), max_size=30))
def test_go_templates(pieces: list[str]) -> None:
    source = "".join(pieces)
    started = time.monotonic()
    try:
        template = Template(source)
        template.render({"Prompt": "hi", "System": "s", "Messages": [{"Role": "user", "Content": "x"}]})
    except TemplateError:
        pass
    assert time.monotonic() - started < 5


modelfile_lines = st.sampled_from(
    ["FROM x", "FROM ./m.gguf", "PARAMETER temperature 0.5", "PARAMETER num_ctx abc", "PARAMETER stop \"",
     "TEMPLATE \"\"\"", "\"\"\"", "SYSTEM hi", "MESSAGE user hi", "MESSAGE nobody hi", "ADAPTER",
     "LICENSE \"\"\"x", "REQUIRES 0.1",
     "# comment", "", "   ", "from lower", "PARAMETER", "UNKNOWN thing"]
)  # fmt: skip


@fuzz
@given(lines=st.lists(modelfile_lines | st.text(max_size=30), max_size=20))
def test_modelfiles(lines: list[str]) -> None:
    with contextlib.suppress(ModelfileError, ValueError):
        parse("\n".join(lines))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Iterator[RuntimeProcess]:
    home = tmp_path_factory.mktemp("fuzz-runtime")
    populate(home, tiny_models)
    proc = RuntimeProcess(home).start()
    yield proc
    log = proc.log_path.read_text(errors="replace")
    proc.stop()
    assert "Traceback" not in log, log[-3000:]


scalar = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=30)
anything = st.recursive(scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=20)  # fmt: skip
MODELS = ["tiny", "tiny-go", "tiny-embed", "tiny-greedy", "missing", "", "a/b/c/d", "tiny:nope"]
option_keys = st.sampled_from(
    ["temperature", "num_ctx", "num_predict", "top_k", "top_p", "seed", "stop", "num_keep", "repeat_penalty",
     "min_p", "typical_p", "mirostat", "num_gpu", "num_thread", "penalize_newline", "bogus"]
)  # fmt: skip


def body_strategy(endpoint: str) -> st.SearchStrategy[dict[str, object]]:
    fields: dict[str, st.SearchStrategy[object]] = {
        "model": st.sampled_from(MODELS) | scalar,
        "stream": st.booleans() | scalar,
        "options": st.dictionaries(option_keys, scalar | st.lists(scalar, max_size=3), max_size=5) | scalar,
        "format": st.sampled_from(["json", ""]) | anything,
        "keep_alive": scalar,
        "think": scalar,
    }
    if endpoint == "/api/chat":
        message = st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]) | scalar, "content": scalar}
        )
        fields["messages"] = st.lists(message | anything, max_size=4) | scalar
        fields["tools"] = anything
    elif endpoint == "/api/generate":
        fields |= {"prompt": scalar, "system": scalar, "template": st.text(max_size=40) | scalar, "raw": scalar,
                   "suffix": scalar, "images": st.lists(scalar, max_size=2) | scalar}  # fmt: skip
    elif endpoint == "/api/embed":
        fields |= {"input": st.lists(scalar, max_size=3) | scalar, "truncate": scalar, "dimensions": scalar}
    elif endpoint == "/api/show":
        fields |= {"verbose": scalar}
    else:  # /api/create
        fields |= {"from": scalar, "files": anything, "template": scalar, "parameters": anything, "messages": anything,
                   "quantize": scalar, "license": anything, "adapters": anything}  # fmt: skip
    return st.fixed_dictionaries({}, optional=fields)


@fuzz
@given(
    data=st.data(), endpoint=st.sampled_from(["/api/chat", "/api/generate", "/api/embed", "/api/show", "/api/create"])
)
def test_api_bodies(daemon: RuntimeProcess, data: st.DataObject, endpoint: str) -> None:
    body = data.draw(body_strategy(endpoint))
    if endpoint == "/api/create" and isinstance(body.get("model"), str):
        body["model"] = f"fuzzed-{abs(hash(json.dumps(body, default=str))) % 10_000}"  # never one the others use
    if isinstance(body.get("options"), dict):
        body["options"]["num_predict"] = 4  # bounded work per example
        body["options"]["num_ctx"] = 256
    try:
        payload = json.dumps(body, allow_nan=False)
    except (ValueError, OverflowError):
        return
    headers = {"Content-Type": "application/json"}
    with (
        httpx.Client(base_url=daemon.url, timeout=120) as client,
        client.stream("POST", endpoint, content=payload, headers=headers) as r,
    ):
        assert r.status_code < 500, (endpoint, payload, r.read()[:500])
        for line in r.iter_lines():  # a streamed answer ends in a result or an error line, well-formed
            if line.strip():
                json.loads(line.removeprefix("data: ")) if not line.startswith("data: [DONE]") else None


def test_the_daemon_still_answers(daemon: RuntimeProcess) -> None:
    r = httpx.post(f"{daemon.url}/api/generate", json={"model": "tiny-greedy", "prompt": "hi", "stream": False})
    assert r.status_code == 200 and r.json()["done"] is True
