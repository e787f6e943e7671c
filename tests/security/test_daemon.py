"""Attacks on the local daemon (``hangar serve``), performed against real processes (issue #19):
a web page's cross-site requests (finding 2), model files built to exhaust the daemon's memory or
time (GGUF bombs, finding 5; a hostile config, 16) and hostile prompt templates (finding 6).

The memory bound asserted for the model-file bombs: the daemon's resident set grows by less than
``RSS_BOUND`` while it lists, shows and refuses them (a watchdog kills it past ``RSS_KILL``, so a
regression cannot take the machine down). "Promptly" means every ``GET /api/version`` sent while
a bomb is being handled is answered within ``PROMPT`` seconds."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from formats.gguf import MAX_ARRAY
from tests.servers import REPO_ROOT, RuntimeProcess
from tests.tinymodels import add_model, write_tiny_llama

HOSTILE = "https://attacker.example"
# What a page's `fetch(url, {method: "POST", mode: "no-cors", body: JSON.stringify(…)})` sends: a
# CORS "simple" request, which browsers send without asking the server first.
CROSS_SITE = {"Content-Type": "text/plain;charset=UTF-8", "Origin": HOSTILE}
MiB = 1024 * 1024
RSS_BOUND = 300 * MiB
RSS_KILL = 1500 * MiB
PROMPT = 1.5


# -- helpers ------------------------------------------------------------------------------------------


class Recorder(ThreadingHTTPServer):
    """A registry that records every request it gets (and answers 404): the attacker's."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.requests.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


def store_of(home: Path) -> Any:
    from client.config import load
    from client.store import Store

    return Store(load({"HANGAR_HOME": str(home)}).models)


def names(url: str) -> set[str]:
    return {m["name"] for m in httpx.get(url + "/api/tags", timeout=30).json()["models"]}


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def during(rt: RuntimeProcess, work: Callable[[], Any], timeout: float = 60) -> tuple[Any, float, float, int]:
    """Run ``work`` in a thread while pinging the daemon: (its result, its seconds, the slowest
    ping's seconds, the daemon's peak RSS). Kills the daemon if its RSS passes RSS_KILL."""
    assert rt.proc is not None
    pid = rt.proc.pid
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except Exception as e:  # reported below
            outcome["error"] = e

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    slowest, peak = 0.0, rss(pid)
    with httpx.Client(timeout=timeout) as ping:
        while thread.is_alive() and time.monotonic() - start < timeout:
            peak = max(peak, rss(pid))
            if peak > RSS_KILL:
                rt.stop()
                pytest.fail(f"the daemon grew to {peak // MiB} MiB")
            t = time.monotonic()
            assert ping.get(rt.url + "/api/version").status_code == 200
            slowest = max(slowest, time.monotonic() - t)
            time.sleep(0.02)
    thread.join(1)
    elapsed = time.monotonic() - start
    assert not thread.is_alive(), f"still running after {elapsed:.0f} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], elapsed, slowest, peak


def hangar(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HANGAR_HOME": str(home)}
    env.pop("HANGAR_MODELS", None)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- 2. cross-site requests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attacker() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path], attacker: Recorder
) -> Iterator[RuntimeProcess]:
    home = tmp_path_factory.mktemp("xsite-home")
    store = store_of(home)
    add_model(store, "tiny", tiny_models["chat"], params={"num_ctx": 256})
    # A model already named after the attacker's registry, for the push.
    add_model(store, f"{attacker.host}/alice/stolen", tiny_models["chat"])
    rt = RuntimeProcess(home).start()
    yield rt
    rt.stop()


def test_cross_site_pull_and_push_never_reach_the_registry(daemon: RuntimeProcess, attacker: Recorder) -> None:
    attacker.requests.clear()
    for route, model in (("/api/pull", f"{attacker.host}/alice/m"), ("/api/push", f"{attacker.host}/alice/stolen")):
        body = json.dumps({"model": model, "insecure": True, "stream": False})
        r = httpx.post(daemon.url + route, content=body, headers=CROSS_SITE, timeout=30)
        assert r.status_code == 403 and "origin" in r.json()["error"]
        # A simple request dressed as a form, and an Origin a sandboxed frame or a
        # no-referrer page sends:
        for headers in (
            {"Content-Type": "application/x-www-form-urlencoded", "Origin": HOSTILE},
            {"Content-Type": "application/json", "Origin": "null"},
        ):
            assert httpx.post(daemon.url + route, content=body, headers=headers, timeout=30).status_code == 403
    time.sleep(0.5)
    assert attacker.requests == [], "the daemon talked to the attacker's registry"
    # The control: the same pull from a program (JSON, no Origin) does reach that registry, so
    # the silence above is the guard's doing.
    r = httpx.post(
        daemon.url + "/api/pull",
        json={"model": f"{attacker.host}/alice/m", "insecure": True, "stream": False},
        timeout=60,
    )
    assert r.status_code >= 400 and attacker.requests


def test_cross_site_requests_change_nothing(daemon: RuntimeProcess) -> None:
    before = names(daemon.url)
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/copy", {"source": "tiny", "destination": "copied"}),
        ("DELETE", "/api/delete", {"model": "tiny"}),
        ("POST", "/api/create", {"model": "created", "from": "tiny", "system": "evil", "stream": False}),
        ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}),
        ("POST", "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/api/embed", {"model": "tiny", "input": "hi"}),
        ("POST", "/api/show", {"model": "tiny"}),
        ("POST", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi"}),
    ]
    for method, path, body in attempts:
        r = httpx.request(method, daemon.url + path, content=json.dumps(body), headers=CROSS_SITE, timeout=30)
        assert r.status_code == 403, (path, r.status_code, r.text)
        assert "access-control-allow-origin" not in r.headers
    blob = b"hello"
    digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    r = httpx.post(daemon.url + f"/api/blobs/{digest}", content=blob, headers={"Origin": HOSTILE}, timeout=30)
    assert r.status_code == 403
    # Reads too: whatever the method, a foreign page gets nothing.
    for path in ("/api/tags", "/api/ps", "/v1/models", "/api/version"):
        assert httpx.get(daemon.url + path, headers={"Origin": HOSTILE}, timeout=30).status_code == 403
    preflight = {"Origin": HOSTILE, "Access-Control-Request-Method": "POST"}
    r = httpx.options(daemon.url + "/api/pull", headers=preflight, timeout=30)
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    assert names(daemon.url) == before
    assert httpx.head(daemon.url + f"/api/blobs/{digest}", timeout=30).status_code == 404


def test_state_changes_need_json(daemon: RuntimeProcess) -> None:
    """Without an Origin (not a browser) JSON, no type or curl's form type; with an allowed
    Origin, JSON only; text/plain and multipart never."""
    copy = {"source": "tiny", "destination": "x"}
    for headers in (
        {"Content-Type": "text/plain"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": "text/plain", "Origin": "http://localhost:3000"},
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://localhost:3000"},
    ):
        r = httpx.post(daemon.url + "/api/copy", content=json.dumps(copy), headers=headers, timeout=30)
        assert r.status_code == 415 and "JSON" in r.json()["error"], headers
    assert "x:latest" not in names(daemon.url)

    # `curl -d '{…}'` sends application/x-www-form-urlencoded: it keeps working.
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", daemon.url + "/api/copy", "-d", json.dumps(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "200", done.stderr
    r = httpx.post(daemon.url + "/api/copy", content=json.dumps({**copy, "destination": "y"}), timeout=30)
    assert r.status_code == 200  # no Content-Type at all
    r = httpx.post(
        daemon.url + "/api/copy",
        json={**copy, "destination": "z"},
        headers={"Origin": "http://localhost:3000"},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert {"x:latest", "y:latest", "z:latest"} <= names(daemon.url)
    for name in ("x", "y", "z"):
        assert httpx.request("DELETE", daemon.url + "/api/delete", json={"model": name}, timeout=30).status_code == 200


# -- 5 and 16. model files built to exhaust the daemon ------------------------------------------------------


def _kv_array(key: bytes, item_type: int, count: int) -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, item_type, count)


def array_count_bomb() -> bytes:
    """49 bytes: one key whose array of strings claims 2^60 elements."""
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _kv_array(b"a", 8, 1 << 60)
    assert len(data) == 49
    return data


def empty_strings_bomb(count: int = 2_000_000) -> bytes:
    """16 MB: a vocabulary of two million empty strings (GGUFReader built ~4 objects each)."""
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _kv_array(b"tokenizer.ggml.tokens", 8, count) + bytes(8 * count)


def add_raw_model(store: Any, name: str, model: bytes | Path, config: bytes | None = None) -> None:
    """A model whose files are given as they are (as a hostile registry serves them)."""
    from formats import mediatypes as mt
    from formats.manifest import Descriptor, Manifest
    from formats.names import ModelName

    store.ensure()
    digest, size = store.add_blob_file(model) if isinstance(model, Path) else store.add_blob_bytes(model)
    config = config if config is not None else b'{"model_format":"gguf","model_family":"llama"}'
    cd, cn = store.add_blob_bytes(config)
    manifest = Manifest.build(Descriptor(mt.DOCKER_CONFIG, cd, cn), [Descriptor(mt.OLLAMA_MODEL, digest, size)])
    store.put_manifest(ModelName.parse(name), manifest.raw)


@pytest.fixture(scope="module")
def bomb_home(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    home = tmp_path_factory.mktemp("bomb-home")
    store = store_of(home)
    add_model(store, "good", tiny_models["chat"], params={"num_ctx": 256})
    add_raw_model(store, "count-bomb", array_count_bomb())
    add_raw_model(store, "strings-bomb", empty_strings_bomb())
    # As many empty strings as one array may hold: legal, read in a worker thread (stepped over).
    add_raw_model(store, "strings-heavy", empty_strings_bomb(MAX_ARRAY))
    whole = tiny_models["plain"].read_bytes()
    add_raw_model(store, "truncated", whole[: len(whole) // 2])  # a download cut short
    add_raw_model(store, "config-bomb", tiny_models["plain"], config=b"[" * 200_000)
    return home


BAD = ("count-bomb", "strings-bomb", "truncated", "config-bomb")


def test_model_file_bombs_are_listed_as_broken_with_bounded_memory(bomb_home: Path) -> None:
    rt = RuntimeProcess(bomb_home).start()
    try:
        assert rt.proc is not None
        base = rss(rt.proc.pid)
        r, elapsed, slowest, peak = during(rt, lambda: httpx.get(rt.url + "/api/tags", timeout=60))
        assert r.status_code == 200 and elapsed < 20, (r.status_code, elapsed)
        assert slowest < PROMPT, f"a ping waited {slowest:.1f} s while /api/tags read the bombs"
        models = {m["name"].split(":")[0]: m for m in r.json()["models"]}
        assert set(models) == {"good", "strings-heavy", *BAD}
        assert "error" not in models["strings-heavy"]["details"]
        good = models["good"]["details"]
        assert good["family"] == "llama" and good["parameter_size"] and "error" not in good
        for name in BAD:
            details = models[name]["details"]
            assert details.get("error"), (name, details)
            assert set(details) >= {"format", "family", "parameter_size", "quantization_level"}  # Ollama's shape
        # Failures are remembered: the second listing parses nothing.
        t = time.monotonic()
        assert httpx.get(rt.url + "/api/tags", timeout=30).status_code == 200
        assert time.monotonic() - t < PROMPT

        def the_rest() -> None:
            shown = httpx.post(rt.url + "/api/show", json={"model": "good", "verbose": True}, timeout=60)
            assert shown.status_code == 200 and shown.json()["model_info"]["general.architecture"] == "llama"
            for name in BAD:
                shown = httpx.post(rt.url + "/api/show", json={"model": name}, timeout=60)
                assert shown.status_code == 200 and shown.json()["details"]["error"], name
                # Never handed to llama.cpp: refused with the reason.
                ran = httpx.post(rt.url + "/api/generate", json={"model": name, "prompt": "hi"}, timeout=60)
                assert ran.status_code == 500 and "cannot be loaded" in ran.json()["error"], name
            ran = httpx.post(
                rt.url + "/api/generate",
                json={"model": "good", "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
                timeout=60,
            )
            assert ran.status_code == 200 and ran.json()["done"]

        _, _, slowest, peak2 = during(rt, the_rest)
        assert slowest < PROMPT
        peak = max(peak, peak2, rss(rt.proc.pid))
        print(f"daemon RSS: {base / MiB:.0f} MiB at start, {peak / MiB:.0f} MiB at peak; /api/tags {elapsed:.2f} s")
        assert peak - base < RSS_BOUND, f"grew by {(peak - base) // MiB} MiB"
    finally:
        rt.stop()


def test_hangar_show_survives_hostile_files(bomb_home: Path) -> None:
    shown = hangar(bomb_home, "show", "good")
    assert shown.returncode == 0 and "llama" in shown.stdout, shown.stderr
    for name in BAD:
        shown = hangar(bomb_home, "show", name)
        assert "Traceback" not in shown.stderr and shown.returncode == 0, (name, shown.stderr[-2000:])
        assert "warning:" in shown.stderr, name
    listed = hangar(bomb_home, "list")
    assert listed.returncode == 0 and all(n in listed.stdout for n in ("good", *BAD)), listed.stderr


def test_header_reader_bounds_and_remembers(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader itself: counts checked against the bytes left, the same answers as gguf's
    GGUFReader on real files, each file read once."""
    from client import model_info
    from formats.gguf import GGUFError, read_header

    bomb = tmp_path / "bomb.gguf"
    bomb.write_bytes(array_count_bomb())
    t = time.monotonic()
    with pytest.raises(GGUFError, match="impossible"):
        read_header(bomb)
    assert time.monotonic() - t < 0.1
    header = read_header(tiny_models["chat"])
    assert header.special_tokens == {"bos": "<s>", "eos": "</s>"}
    assert header.metadata["general.architecture"] == "llama" and header.metadata["tokenizer.ggml.tokens"] == []
    assert len(read_header(tiny_models["chat"], max_array=1 << 30).metadata["tokenizer.ggml.tokens"]) == 269

    calls: list[Path] = []

    def counting(path: Path, max_array: int = 5) -> Any:
        calls.append(path)
        return read_header(path, max_array)

    monkeypatch.setattr("client.model_info.read_header", counting)
    for _ in range(3):
        with pytest.raises(GGUFError):
            model_info.read_gguf_metadata(bomb)
        model_info.read_gguf_metadata(tiny_models["plain"])
    assert calls == [bomb, tiny_models["plain"]]


# -- 6. templates -----------------------------------------------------------------------------------------------

NESTED_RANGE = "{{range 4000}}{{range 4000}}{{end}}{{end}}{{ .Prompt }}"
ATTRIBUTE = "{{ .Prompt.__class__.__base__.__subclasses__ }}"
DOUBLING = '{{ $x := "ab" }}{{ range 25 }}{{ $x = print $x $x }}{{ end }}{{ $x }}'
JINJA_LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def template_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Iterator[RuntimeProcess]:
    home = tmp_path_factory.mktemp("template-home")
    store = store_of(home)
    add_model(store, "good", tiny_models["chat"], params={"num_ctx": 256})
    add_model(store, "nested-range", tiny_models["plain"], template=NESTED_RANGE)
    add_model(store, "attribute", tiny_models["plain"], template=ATTRIBUTE)
    add_model(store, "doubling", tiny_models["plain"], template=DOUBLING)
    jinja = write_tiny_llama(home / "jinja.gguf", chat_template=JINJA_LOOP, seed=5)
    add_model(store, "jinja-loop", jinja)
    rt = RuntimeProcess(home).start()
    yield rt
    rt.stop()


@pytest.mark.parametrize("model", ["nested-range", "doubling", "jinja-loop"])
def test_template_bombs_fail_fast_without_stalling(template_daemon: RuntimeProcess, model: str) -> None:
    rt = template_daemon
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    r, elapsed, slowest, _ = during(rt, lambda: httpx.post(rt.url + "/api/chat", json=chat, timeout=60))
    assert r.status_code == 400 and "template" in r.json()["error"], (r.status_code, r.text[:300])
    assert elapsed < 15 and slowest < PROMPT, (elapsed, slowest)
    # The same template sent with a request (Ollama's "template" field) is bounded the same way.
    if model != "jinja-loop":
        source = {"nested-range": NESTED_RANGE, "doubling": DOUBLING}[model]
        body = {"model": "good", "prompt": "hi", "template": source, "_debug_render_only": True, "stream": False}
        r, _, slowest, _ = during(rt, lambda: httpx.post(rt.url + "/api/generate", json=body, timeout=60))
        assert r.status_code == 400 and slowest < PROMPT


def test_template_fields_are_data_not_python_attributes(template_daemon: RuntimeProcess) -> None:
    rt = template_daemon
    body = {"model": "attribute", "prompt": "hi", "_debug_render_only": True, "stream": False}
    r = httpx.post(rt.url + "/api/generate", json=body, timeout=60)
    assert r.status_code == 400 and "can't evaluate field __class__" in r.json()["error"], r.text[:300]
    assert "method" not in r.text and "built-in" not in r.text
    # Fields of the template's own data still resolve, as Ollama's do.
    body = {"model": "good", "prompt": "hi", "template": "[{{ .Prompt }}]", "_debug_render_only": True}
    r = httpx.post(rt.url + "/api/generate", json={**body, "stream": False}, timeout=60)
    assert r.status_code == 200 and r.json()["_debug_info"]["rendered_template"] == "[hi]"


@pytest.mark.parametrize(
    "source",
    [
        "{{ range 100000000000000 }}x{{ end }}",  # refused before the first turn
        "{{ if 1 }}" * 5000 + "{{ end }}" * 5000,
        "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
        '{{ $x := "ab" }}{{ range 60 }}{{ $x = printf "%s%s" $x $x }}{{ end }}',
        "{{ range $i, $m := .Messages }}{{ range $.Messages }}{{ range $.Messages }}{{ json $ }}"
        "{{ end }}{{ end }}{{ end }}",
    ],
)
def test_go_template_budgets(source: str) -> None:
    from formats.gotemplate import TemplateError
    from runtime.prompts import Message, PromptTemplate

    messages = [Message("user" if i % 2 else "assistant", "x" * 100) for i in range(100)]
    t = time.monotonic()
    with pytest.raises(TemplateError):
        PromptTemplate(source, None).render(messages)
    assert time.monotonic() - t < 5


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 1000000000 }}",
        "{{ 9 ** 999999 }}",
        "{{ ((9 ** 64) ** 64) ** 64 }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        "{% for m in messages %}{% for n in messages %}{% for o in messages %}{{ o.content }}"
        "{% endfor %}{% endfor %}{% endfor %}",
    ],
)
def test_jinja_template_budgets(source: str) -> None:
    from formats.gotemplate import TemplateError
    from runtime.prompts import Message, PromptTemplate

    messages = [Message("user" if i % 2 else "assistant", "x" * 100) for i in range(300)]
    t = time.monotonic()
    with pytest.raises(TemplateError):
        PromptTemplate(None, source).render(messages)
    assert time.monotonic() - t < 5


def test_budgets_leave_real_conversations_alone() -> None:
    from runtime.prompts import Message, PromptTemplate
    from tests.tinymodels import CHAT_TEMPLATE, CHATML_TOOLS_TEMPLATE

    messages = [Message("user" if i % 2 else "assistant", "word " * 2000) for i in range(2000)]  # 20 MB
    assert len(PromptTemplate(CHATML_TOOLS_TEMPLATE, None).render(messages)) > 20_000_000
    assert len(PromptTemplate(None, CHAT_TEMPLATE).render(messages)) > 20_000_000
