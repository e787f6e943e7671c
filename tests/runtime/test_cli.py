"""``hangar run``, ``ps`` and ``stop`` as a user types them: one-shot answers, piped input,
embeddings, the interactive prompt (on a pseudo-terminal), and starting the daemon on demand."""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.runtime import processor
from tests.runtime.checks import is_json_prefix
from tests.servers import REPO_ROOT, RuntimeProcess, free_port, wait_until


def cli_env(home: Path, host: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HANGAR_HOME": str(home), "HANGAR_HOST": host, "PYTHONIOENCODING": "utf-8", **extra}
    env.pop("HANGAR_MODELS", None)
    return env


def hangar(
    env: dict[str, str], *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture
def env(runtime: RuntimeProcess, tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path / "cli-home", f"127.0.0.1:{runtime.port}")


def generate(runtime: RuntimeProcess, model: str, prompt: str, **options: Any) -> str:
    r = httpx.post(
        runtime.url + "/api/generate",
        json={"model": model, "prompt": prompt, "stream": False, "options": options},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["response"])


def chat(runtime: RuntimeProcess, model: str, messages: list[dict[str, str]], **options: Any) -> str:
    r = httpx.post(
        runtime.url + "/api/chat",
        json={"model": model, "messages": messages, "stream": False, "options": options},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["message"]["content"])


def test_run_answers_a_prompt_once(runtime: RuntimeProcess, env: dict[str, str]) -> None:
    expected = generate(runtime, "tiny-greedy", "Why is the sky blue?")
    assert expected  # the greedy model says something
    out = hangar(env, "run", "tiny-greedy", "Why", "is", "the", "sky", "blue?").stdout
    assert out == expected + "\n"


def test_piped_input_comes_before_the_prompt(runtime: RuntimeProcess, env: dict[str, str]) -> None:
    expected = generate(runtime, "tiny-greedy", "some notes\n summarise")
    out = hangar(env, "run", "tiny-greedy", "summarise", stdin="some notes\n").stdout
    assert out == expected + "\n"
    alone = hangar(env, "run", "tiny-greedy", stdin="only piped").stdout
    assert alone == generate(runtime, "tiny-greedy", "only piped") + "\n"


def test_run_format_json_and_verbose_timings(runtime: RuntimeProcess, env: dict[str, str]) -> None:
    r = hangar(env, "run", "tiny-greedy", "--format", "json", "--verbose", "give me json")
    response = httpx.post(
        runtime.url + "/api/generate",
        json={"model": "tiny-greedy", "prompt": "give me json", "format": "json", "stream": False},
        timeout=60,
    ).json()["response"]
    assert r.stdout == response + "\n"
    assert response.startswith("{") and is_json_prefix(response)  # cut short by num_predict 12
    labels = [line.split(":")[0] for line in r.stderr.splitlines()]
    assert labels == [
        "total duration",
        "load duration",
        "prompt eval count",
        "prompt eval duration",
        "prompt eval rate",
        "eval count",
        "eval duration",
        "eval rate",
    ]
    assert "tokens/s" in r.stderr.splitlines()[-1]


def test_embedding_model_prints_its_vector(runtime: RuntimeProcess, env: dict[str, str]) -> None:
    out = hangar(env, "run", "tiny-embed", "hello world").stdout
    vector = json.loads(out)
    r = httpx.post(runtime.url + "/api/embed", json={"model": "tiny-embed", "input": "hello world"}, timeout=60)
    assert vector == pytest.approx(r.json()["embeddings"][0])
    assert sum(v * v for v in vector) == pytest.approx(1.0, abs=1e-3)


def test_ps_and_stop(runtime: RuntimeProcess, env: dict[str, str]) -> None:
    hangar(env, "run", "tiny-greedy", "--keepalive", "-1", "hi")
    rows = hangar(env, "ps").stdout.splitlines()
    assert rows[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    mine = [row for row in rows[1:] if row.startswith("tiny-greedy:latest ")]
    assert len(mine) == 1
    loaded = next(m for m in httpx.get(runtime.url + "/api/ps").json()["models"] if m["name"] == "tiny-greedy:latest")
    assert loaded["digest"][:12] in mine[0]
    assert processor(loaded["size_vram"] / loaded["size"]) in mine[0]
    assert mine[0].split()[-1] == "Forever" and " 512 " in mine[0]

    hangar(env, "stop", "tiny-greedy")
    assert not any(row.startswith("tiny-greedy:latest ") for row in hangar(env, "ps").stdout.splitlines())


def test_keepalive_zero_unloads_after_answering(runtime: RuntimeProcess, env: dict[str, str]) -> None:
    hangar(env, "run", "tiny-greedy", "--keepalive", "0", "hi")
    names = [m["name"] for m in httpx.get(runtime.url + "/api/ps").json()["models"]]
    assert "tiny-greedy:latest" not in names


def test_run_errors_are_clear(runtime: RuntimeProcess, env: dict[str, str], registry) -> None:  # type: ignore[no-untyped-def]
    r = hangar(env, "run", f"{registry.host}/nobody/missing", "hi", check=False)
    assert r.returncode == 1
    assert "file does not exist" in r.stderr and "Traceback" not in r.stderr
    r = hangar(env, "run", "tiny-embed", check=False)
    assert r.returncode == 2 and "needs a prompt" in r.stderr
    r = hangar(cli_env(Path(env["HANGAR_HOME"]), f"127.0.0.1:{free_port()}"), "ps", check=False)
    assert r.returncode == 1 and "hangar serve" in r.stderr


class Terminal:
    """A child process on a pseudo-terminal in raw mode (no echo, no newline translation), so its
    output is exactly what it wrote."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        os.close(slave)
        self.fd = master
        self.output = ""
        self.seen = 0

    def expect(self, marker: str, timeout: float = 120) -> str:
        """Everything written since the last expect, up to and including ``marker``."""
        deadline = time.monotonic() + timeout
        while marker not in self.output[self.seen :]:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {marker!r} in {self.output[self.seen :]!r}"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                assert chunk, f"the process ended before {marker!r}: {self.output[self.seen :]!r}"
                self.output += chunk.decode("utf-8", "replace")
        end = self.output.index(marker, self.seen) + len(marker)
        part, self.seen = self.output[self.seen : end], end
        return part

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        os.close(self.fd)


def test_interactive_session(runtime: RuntimeProcess, env: dict[str, str]) -> None:
    term = Terminal(env, "run", "tiny")
    try:
        term.expect("Send a message (/? for help)\n")
        term.expect(">>> ")
        term.send("/?")
        assert "/set parameter NAME VALUE" in term.expect(">>> ")
        term.send("/set parameter temperature 0")
        assert "Set parameter 'temperature' to '0'" in term.expect(">>> ")
        term.send("/set parameter num_predict 8")
        term.expect(">>> ")
        term.send("/set parameter colour red")
        assert "Unknown parameter 'colour'" in term.expect(">>> ")
        term.send("/set parameter top_k many")
        assert "invalid int value [many]" in term.expect(">>> ")
        term.send("/set system Be terse.")
        assert "Set system message." in term.expect(">>> ")
        term.send("/show parameters")
        assert "num_ctx" in term.expect(">>> ")
        term.send("/show info")
        assert "completion" in term.expect(">>> ")
        term.send("/nonsense")
        assert "Unknown command '/nonsense'" in term.expect(">>> ")

        # A multi-line message is one user turn.
        greedy = {"temperature": 0.0, "num_predict": 8}
        system = {"role": "system", "content": "Be terse."}
        first = {"role": "user", "content": "line one\nline two"}
        answer1 = chat(runtime, "tiny", [system, first], **greedy)
        term.send('"""line one')
        term.expect("... ")
        term.send('line two"""')
        assert answer1 + "\n" in term.expect(">>> ")

        # The conversation carries on with the history...
        second = {"role": "user", "content": "and then?"}
        answer2 = chat(runtime, "tiny", [system, first, {"role": "assistant", "content": answer1}, second], **greedy)
        term.send("and then?")
        assert answer2 + "\n" in term.expect(">>> ")

        # ...until /clear.
        term.send("/clear")
        assert "Cleared session context" in term.expect(">>> ")
        fresh = {"role": "user", "content": "hello again"}
        term.send("hello again")
        assert chat(runtime, "tiny", [system, fresh], **greedy) + "\n" in term.expect(">>> ")

        term.send("/bye")
        assert term.proc.wait(30) == 0
    finally:
        term.close()


def test_run_starts_the_daemon_and_pulls_what_is_missing(
    registry, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:  # type: ignore[no-untyped-def]
    """End to end: alice pushes a model from her store; bob, with an empty store and no runtime
    running, `hangar run`s it and gets an answer."""
    from client.config import load
    from client.store import Store
    from tests.tinymodels import add_model

    name = f"{registry.host}/team/tiny-e2e:v1"
    alice = cli_env(tmp_path / "alice", "127.0.0.1:1")
    add_model(
        Store(load({"HANGAR_HOME": alice["HANGAR_HOME"]}).models),
        name,
        tiny_models["chat"],  # its GGUF carries a chat template
        params={"num_ctx": 512, "temperature": 0, "num_predict": 10},
    )
    hangar(alice, "push", name)

    port = free_port()
    bob = cli_env(tmp_path / "bob", f"127.0.0.1:{port}")
    pid_file = tmp_path / "bob" / "logs" / "serve.pid"
    try:
        r = hangar(bob, "run", name, "Hello there")
        assert r.stdout.strip(), r.stderr
        # The daemon it started stays up, serving bob's store, which now holds the model.
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/").text == "Ollama is running"
        tags = [m["name"] for m in httpx.get(base + "/api/tags").json()["models"]]
        assert tags == [name]
        again = httpx.post(
            base + "/api/generate", json={"model": name, "prompt": "Hello there", "stream": False}, timeout=60
        )
        assert r.stdout == again.json()["response"] + "\n"
        listed = hangar(bob, "list").stdout
        assert name in listed
    finally:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.killpg(pid, signal.SIGTERM)
            wait_until(lambda: not _running(pid), 20, "the daemon to stop")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_attaches_image_files_for_vision_models(
    runtime: RuntimeProcess, env: dict[str, str], tmp_path: Path
) -> None:
    from tests.tinymodels import png

    picture = png(16, 16, (250, 200, 0))
    (tmp_path / "sun flower.png").write_bytes(picture)
    r = httpx.post(
        runtime.url + "/api/generate",
        json={
            "model": "tiny-vision",
            "prompt": "describe",
            "images": [base64.b64encode(picture).decode()],
            "stream": False,
        },
        timeout=60,
    )
    expected = r.json()["response"]
    path = str(tmp_path / "sun flower.png").replace(" ", "\\ ")
    out = hangar(env, "run", "tiny-vision", f"describe {path}")
    assert out.stdout == expected + "\n"
    assert "Added image" in out.stderr
