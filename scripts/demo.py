"""The main job, end to end, on this machine (run by scripts/demo.sh):

1. start a registry on the embedded default (SQLite + a local folder) under ./.demo;
2. alice builds a small GGUF model in her store, signs in with a new ed25519 key and pushes it;
3. bob, with an empty store of his own and no account, pulls it;
4. the two stores are compared byte for byte.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
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


def tiny_gguf(path: Path) -> None:
    """A small llama-architecture GGUF with random weights (a stand-in for a real model)."""
    import gguf

    rng = np.random.default_rng(0)
    vocab, dim, layers, ff = 256, 64, 2, 128
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("hangar-demo-tiny")
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([bytes([i]).decode("latin-1") for i in range(vocab)])
    w.add_token_types([gguf.TokenType.NORMAL] * vocab)
    w.add_token_merges([])

    def t(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    t("token_embd.weight", vocab, dim)
    for i in range(layers):
        for part, shape in [("attn_q", (dim, dim)), ("attn_k", (dim, dim)), ("attn_v", (dim, dim)),
                            ("attn_output", (dim, dim)), ("ffn_gate", (ff, dim)), ("ffn_up", (ff, dim)),
                            ("ffn_down", (dim, ff))]:  # fmt: skip
            t(f"blk.{i}.{part}.weight", *shape)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    t("output.weight", vocab, dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def create_model(home: Path, name: str, gguf_path: Path) -> None:
    """Put a model into alice's store with the client library (``hangar create`` comes later)."""
    import json

    from client.config import load
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
        (mt.OLLAMA_TEMPLATE, b"{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}"),
        (mt.OLLAMA_SYSTEM, b"You are a tiny demo model."),
        (mt.OLLAMA_PARAMS, json.dumps({"temperature": 0.2, "num_ctx": 256}).encode()),
    ]:
        d, n = store.add_blob_bytes(data)
        layers.append(Descriptor(media_type, d, n))
    config = {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
              "model_type": "0.1M", "file_type": "F32", "architecture": "amd64", "os": "linux"}  # fmt: skip
    cd, cn = store.add_blob_bytes(json.dumps(config).encode() + b"\n")
    manifest = Manifest.build(Descriptor(mt.DOCKER_CONFIG, cd, cn), layers)
    store.put_manifest(ModelName.parse(name), manifest.raw)


def hangar(home: Path, *args: str) -> None:
    env = {**os.environ, "HANGAR_HOME": str(home)}
    env.pop("HANGAR_MODELS", None)
    print("$ hangar " + " ".join(args), flush=True)
    subprocess.run(HANGAR + list(args), env=env, check=True, cwd=ROOT)


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
        name = f"{host}/alice/tiny:latest"
        step("alice creates a small GGUF model in her store")
        tiny_gguf(DEMO / "tiny.gguf")
        create_model(alice, name, DEMO / "tiny.gguf")
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
        step("success")
        return 0
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
