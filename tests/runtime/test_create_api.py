"""``/api/blobs`` and ``/api/create`` on a real ``hangar serve``: raw requests, the official ollama
package, and ``hangar create`` uploading to a running daemon."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import httpx
import ollama
import pytest

from tests.servers import REPO_ROOT, RuntimeProcess
from tests.tinymodels import write_tiny_llama


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("create") / "small.gguf", dim=256, seed=9)


def digest_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_blob_upload_checks_the_digest(runtime: RuntimeProcess, gguf: Path) -> None:
    with httpx.Client(base_url=runtime.url, timeout=60) as api:
        fresh = os.urandom(64)  # bytes no test uploaded: not there yet
        fresh_digest = "sha256:" + hashlib.sha256(fresh).hexdigest()
        assert api.head(f"/api/blobs/{fresh_digest}").status_code == 404
        wrong = "sha256:" + "0" * 64
        r = api.post(f"/api/blobs/{wrong}", content=fresh)
        assert r.status_code == 400 and r.json()["error"].startswith(f"digest mismatch, expected {wrong}, got sha256:")
        assert api.head(f"/api/blobs/{wrong}").status_code == 404  # nothing was kept
        assert api.post("/api/blobs/sha256-abc", content=b"x").status_code == 400
        assert api.post(f"/api/blobs/{fresh_digest}", content=fresh).status_code == 201
        assert api.head(f"/api/blobs/{fresh_digest}").status_code == 200
        # Already present: 200, as Ollama answers (201 is for a blob the request made).
        assert api.post(f"/api/blobs/{fresh_digest}", content=fresh).status_code == 200
        digest = digest_of(gguf)
        assert api.post(f"/api/blobs/{digest}", content=gguf.read_bytes()).status_code in (200, 201)
        assert api.head(f"/api/blobs/{digest}").status_code == 200


def test_create_streams_ollama_statuses_and_the_model_answers(runtime: RuntimeProcess, gguf: Path) -> None:
    with httpx.Client(base_url=runtime.url, timeout=120) as api:
        digest = digest_of(gguf)
        api.post(f"/api/blobs/{digest}", content=gguf.read_bytes())
        body = {
            "model": "made/here:v1",
            "files": {"small.gguf": digest},
            "template": "<|user|>{{ .Prompt }}<|assistant|>",
            "system": "Made over the API.",
            "parameters": {"temperature": 0, "num_predict": 3, "stop": ["</s>"]},
            "license": "MIT",
            "quantize": "q4_k_m",
        }
        with api.stream("POST", "/api/create", json=body) as r:
            statuses = [json.loads(line)["status"] for line in r.iter_lines() if line.strip()]
        assert statuses[0] == "parsing GGUF" and "quantizing F32 model to Q4_K_M" in statuses
        assert statuses[-2:] == ["writing manifest", "success"]
        show = api.post("/api/show", json={"model": "made/here:v1"}).json()
        assert show["details"]["quantization_level"] == "Q4_K_M" and show["system"] == "Made over the API."
        answer = api.post("/api/generate", json={"model": "made/here:v1", "prompt": "hi", "stream": False}).json()
        assert answer["eval_count"] <= 3 and answer["done"]

        from_parent = api.post(
            "/api/create",
            json={"model": "made/child", "from": "made/here:v1", "system": "Child.", "stream": False},
        )
        assert from_parent.json() == {"status": "success"}
        assert api.post("/api/show", json={"model": "made/child"}).json()["system"] == "Child."
        # A quantized model asked for its own type: Ollama's error (it checks the source first), 500.
        again = api.post("/api/create", json={"model": "made/again", "from": "made/here:v1", "quantize": "Q4_K_M"})
        assert again.status_code == 500
        assert again.json()["error"].startswith("quantization is only supported for F16, BF16 and F32 models")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "x"}, "neither 'from' or 'files' was specified"),
        ({"files": {"a.gguf": "sha256:" + "1" * 64}}, "model is required"),
        ({"model": "x", "files": {"../a.gguf": "sha256:" + "1" * 64}}, "must be a relative path"),
        ({"model": "x", "files": {"a.gguf": "nope"}}, "needs a digest"),
        ({"model": "x", "from": "tiny", "quantize": "q9"}, "unsupported quantization type q9"),
        ({"model": "x", "from": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "needs a role"),
    ],
)
def test_create_refuses_bad_requests(runtime: RuntimeProcess, body: dict, message: str) -> None:  # type: ignore[type-arg]
    r = httpx.post(runtime.url + "/api/create", json=body, timeout=60)
    assert r.status_code == 400 and message in r.json()["error"]


def test_create_errors_after_the_stream_began_arrive_as_an_error_line(runtime: RuntimeProcess, gguf: Path) -> None:
    digest = digest_of(gguf)
    httpx.post(f"{runtime.url}/api/blobs/{digest}", content=gguf.read_bytes(), timeout=60)
    # "parsing GGUF" is reported before the adapter is found not to be one: the error is the
    # stream's last line, under the 200 already sent.
    r = httpx.post(
        runtime.url + "/api/create",
        json={"model": "x", "files": {"small.gguf": digest}, "adapters": {"a.gguf": digest}},
        timeout=60,
    )
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.strip().splitlines()]
    assert lines[0] == {"status": "parsing GGUF"} and "not a LoRA adapter GGUF" in lines[-1]["error"]
    assert set(lines[-1]) == {"error"}
    r = httpx.post(
        runtime.url + "/api/create",
        json={"model": "x", "from": "tiny", "template": "{{ .Prompt", "stream": False},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"].startswith("template error")


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"files": {"a.gguf": "sha256:" + "2" * 64}}, 500, "no blob sha256:2222"),
        ({"from": "tiny", "adapters": {"a.gguf": "sha256:" + "2" * 64}}, 500, "no blob sha256:2222"),
        ({"from": "tiny", "parameters": {"colour": 1}}, 400, "unknown parameter 'colour'"),
        ({"from": "tiny", "parameters": {"temperature": math.inf}}, 400, "must be a finite number"),
        ({"from": "tiny", "parameters": {"num_ctx": "big"}}, 400, "option 'num_ctx' must be an integer"),
        ({"from": "tiny", "template": "{{ .Prompt"}, 400, "template error"),
        ({"from": "tiny", "draft_files": {"d.gguf": "sha256:" + "3" * 64}}, 400, "draft models"),
        ({"from": "tiny", "draft_quantize": "q8_0"}, 400, "--draft-quantize requires a DRAFT model"),
        ({"from": "tiny", "remote_host": "http://elsewhere:11434"}, 400, "remote models are not supported"),
        ({"from": "tiny", "info": {"capabilities": "tools"}}, 400, 'info field "capabilities" must be an array'),
        ({"from": "tiny", "info": {"context_length": -1}}, 400, 'info field "context_length" must be a non-negative'),
        ({"from": "tiny", "info": {"model_family": 3}}, 400, 'info field "model_family" must be a string'),
        ({"from": "tiny", "messages": [{"role": "user", "content": "x", "images": ["%%"]}]}, 400, "base64"),
    ],
)
def test_errors_before_any_progress_are_plain_http_errors(
    runtime: RuntimeProcess,
    body: dict,
    status: int,
    message: str,
    stream: bool,  # type: ignore[type-arg]
) -> None:
    """#18 item 16: an error found before anything was streamed is an HTTP error with Ollama's
    status (400 for a bad request, 500 for a failure doing the work), streaming or not; with
    ``stream: false`` the same."""
    # Python's JSON writer sends an infinity as Infinity, which Python's reader (the daemon's) takes.
    raw = json.dumps({"model": "x", **body, "stream": stream})
    r = httpx.post(runtime.url + "/api/create", content=raw, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert message in r.json()["error"] and set(r.json()) == {"error"}


def test_messages_info_and_show_keep_what_ollama_keeps(runtime: RuntimeProcess) -> None:
    """#18 items 13, 15, 16 over the API: seed messages keep thinking, images, tool calls and
    the tool role; ``info`` lands in the config; a system prompt no Modelfile can hold does not
    break /api/show."""
    messages = [
        {"role": "User", "content": "Weather?", "images": ["aGVsbG8="]},
        {"role": "assistant", "content": "", "thinking": "Look it up.",
         "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo", "days": 2}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
    ]  # fmt: skip
    system = 'Format:\n"""\ncode\n"""\nDone.'
    with httpx.Client(base_url=runtime.url, timeout=60) as api:
        r = api.post(
            "/api/create",
            json={"model": "kept/all", "from": "tiny", "messages": messages, "system": system, "stream": False,
                  "info": {"capabilities": ["tools", "thinking"], "parameter_size": "7B"}},
        )  # fmt: skip
        assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
        shown = api.post("/api/show", json={"model": "kept/all"})
        assert shown.status_code == 200, shown.text
        body = shown.json()
        assert body["system"] == system
        assert '# SYSTEM below holds a line ending in """' in body["modelfile"]
        assert body["details"]["parameter_size"] == "7B"
        assert body["messages"] == [
            {"role": "user", "content": "Weather?", "images": ["aGVsbG8="]},
            {"role": "assistant", "content": "", "thinking": "Look it up.",
             "tool_calls": [{"function": {"index": 0, "name": "weather", "arguments": {"city": "Oslo", "days": 2}}}]},
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
        ]  # fmt: skip
    home = runtime.home  # the daemon's store: the config as written
    from client.config import load
    from client.store import Store
    from formats.names import ModelName

    store = Store(load({"HANGAR_HOME": str(home)}).models)
    model = store.get(ModelName.parse("kept/all"))
    assert model.manifest.config is not None
    config = json.loads(store.blob_path(model.manifest.config.digest).read_bytes())
    assert config["capabilities"] == ["tools", "thinking"] and config["model_type"] == "7B"


def test_the_ollama_package_creates_models(runtime: RuntimeProcess, gguf: Path) -> None:
    oc = ollama.Client(host=runtime.url)
    digest = oc.create_blob(gguf)
    assert digest == digest_of(gguf)
    done = oc.create(
        model="pkg/made", files={"small.gguf": digest}, system="From the package.", parameters={"top_k": 3}
    )
    assert done.status == "success"
    shown = oc.show("pkg/made")
    assert "SYSTEM From the package." in (shown.modelfile or "") and "top_k" in (shown.parameters or "")
    steps = [p.status for p in oc.create(model="pkg/derived", from_="pkg/made", template="{{ .Prompt }}", stream=True)]
    assert steps[-1] == "success" and any(s and s.startswith("using existing layer") for s in steps)


def test_hangar_create_uploads_to_a_running_daemon(runtime: RuntimeProcess, gguf: Path, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text(f"FROM {gguf}\nSYSTEM Through the daemon.\n")
    env = {**os.environ, "HANGAR_HOME": str(tmp_path / "cli-home"), "HANGAR_HOST": f"127.0.0.1:{runtime.port}"}
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "create", "cli/made", "-f", str(tmp_path / "Modelfile")],
        env=env, capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "success"
    # The model is in the daemon's store, not in the CLI's own.
    assert httpx.post(runtime.url + "/api/show", json={"model": "cli/made"}).json()["system"] == "Through the daemon."
    assert not (tmp_path / "cli-home" / "models" / "manifests").exists()


def test_an_adapter_changes_what_the_model_says(runtime: RuntimeProcess, gguf: Path, tmp_path: Path) -> None:
    """ADAPTER: a LoRA GGUF becomes an adapter layer, and the runtime applies it."""
    from tests.tinymodels import write_tiny_lora

    lora = write_tiny_lora(tmp_path / "lora.gguf", dim=256, layers=2)
    oc = ollama.Client(host=runtime.url)
    base, adapter = oc.create_blob(gguf), oc.create_blob(lora)
    oc.create(model="lora/plain", files={"small.gguf": base})
    oc.create(model="lora/tuned", files={"small.gguf": base}, adapters={"lora.gguf": adapter})
    shown = oc.show("lora/tuned")
    assert "ADAPTER " in (shown.modelfile or "")

    def first_logprob(model: str) -> float:
        r = httpx.post(
            runtime.url + "/api/generate",
            json={"model": model, "prompt": "hello", "raw": True, "stream": False, "logprobs": True,
                  "options": {"temperature": 0, "num_predict": 1}},
            timeout=60,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        return float(r.json()["logprobs"][0]["logprob"])

    assert first_logprob("lora/plain") == first_logprob("lora/plain")
    assert first_logprob("lora/tuned") != first_logprob("lora/plain")
    refused = httpx.post(
        runtime.url + "/api/create",
        json={"model": "lora/bad", "files": {"small.gguf": base}, "adapters": {"x.gguf": base}, "stream": False},
        timeout=60,
    )
    assert refused.status_code == 400 and "not a LoRA adapter GGUF" in refused.json()["error"]
