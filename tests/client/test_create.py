"""``hangar create`` into the local store: layers and config from a Modelfile, the show --modelfile
round trip, every quantization type, FROM an existing model, and the errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from client.config import load
from client.store import Store
from formats import mediatypes as mt
from formats.names import ModelName
from tests.servers import REPO_ROOT
from tests.tinymodels import CHAT_TEMPLATE, write_tiny_llama, write_tiny_projector

MODELFILE = '''FROM ./tiny.gguf
TEMPLATE """{{ if .System }}<|system|>{{ .System }}{{ end }}
<|user|>{{ .Prompt }}<|assistant|>"""
SYSTEM You are tiny.
PARAMETER temperature 0.3
PARAMETER num_ctx 256
PARAMETER stop <|end|>
PARAMETER stop "User:"
MESSAGE user hi
MESSAGE assistant hello
LICENSE MIT
LICENSE """Second
licence"""
'''


def hangar(home: Path, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    # No runtime at this address: create writes the store directly.
    env = {**os.environ, "HANGAR_HOME": str(home), "HANGAR_HOST": "127.0.0.1:9"}
    env.pop("HANGAR_MODELS", None)
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, cwd=cwd or REPO_ROOT
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An F32 llama GGUF whose rows suit every quantization type (256 columns)."""
    return write_tiny_llama(tmp_path_factory.mktemp("src") / "tiny.gguf", dim=256, chat_template=CHAT_TEMPLATE)


@pytest.fixture
def workdir(tmp_path: Path, tiny: Path) -> Path:
    (tmp_path / "tiny.gguf").symlink_to(tiny)
    (tmp_path / "Modelfile").write_text(MODELFILE)
    return tmp_path


def layers_of(home: Path, name: str) -> tuple[list[Any], dict[str, Any], Store]:
    store = Store(load({"HANGAR_HOME": str(home)}).models)
    model = store.get(ModelName.parse(name))
    assert model.manifest.config is not None
    config = json.loads(store.blob_path(model.manifest.config.digest).read_bytes())
    return list(model.manifest.layers), config, store


def model_config_digest(home: Path, name: str) -> Any:
    store = Store(load({"HANGAR_HOME": str(home)}).models)
    config = store.get(ModelName.parse(name)).manifest.config
    assert config is not None
    return config.digest


def test_create_from_a_gguf_with_every_instruction(workdir: Path, tiny: Path) -> None:
    home = workdir / "home"
    out = hangar(home, "create", "team/tiny:v1", cwd=workdir).stdout.splitlines()
    assert out[0] == "gathering model components" and out[-2:] == ["writing manifest", "success"]
    assert sum(line.startswith("creating new layer sha256:") for line in out) == 8  # 7 layers + config

    layers, config, store = layers_of(home, "team/tiny:v1")
    assert [d.media_type for d in layers] == [
        mt.OLLAMA_MODEL, mt.OLLAMA_TEMPLATE, mt.OLLAMA_SYSTEM, mt.OLLAMA_LICENSE, mt.OLLAMA_LICENSE,
        mt.OLLAMA_PARAMS, mt.OLLAMA_MESSAGES,
    ]  # fmt: skip

    def text(i: int) -> str:
        return store.blob_path(layers[i].digest).read_text()

    assert store.blob_path(layers[0].digest).read_bytes() == tiny.read_bytes()
    assert text(1) == "{{ if .System }}<|system|>{{ .System }}{{ end }}\n<|user|>{{ .Prompt }}<|assistant|>"
    assert text(2) == "You are tiny."
    assert (text(3), text(4)) == ("MIT", "Second\nlicence")
    # JSON layers as Go's encoder writes them (sorted map keys, HTML-safe escapes, a newline).
    assert text(5) == '{"num_ctx":256,"stop":["\\u003c|end|\\u003e","User:"],"temperature":0.3}\n'
    assert text(6) == '[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]\n'
    assert store.blob_path(model_config_digest(home, "team/tiny:v1")).read_text() == (
        '{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"1.45M",'
        '"file_type":"F32","architecture":"amd64","os":"linux"}\n'
    )
    assert config["model_type"] == "1.45M"  # Ollama's format.HumanNumber
    shown = hangar(home, "show", "team/tiny:v1").stdout
    assert "quantization        F32" in shown and "You are tiny." in shown


def test_show_modelfile_round_trips_to_the_same_layers(workdir: Path) -> None:
    home = workdir / "home"
    hangar(home, "create", "first", cwd=workdir)
    modelfile = hangar(home, "show", "first", "--modelfile").stdout
    (workdir / "Again").write_text(modelfile)
    out = hangar(home, "create", "second", "-f", str(workdir / "Again")).stdout
    assert "creating new layer" not in out  # every layer already exists
    first, first_config, _ = layers_of(home, "first")
    second, second_config, _ = layers_of(home, "second")
    assert [(d.media_type, d.digest) for d in first] == [(d.media_type, d.digest) for d in second]
    assert first_config == second_config


@pytest.mark.parametrize(
    "kind",
    [
        "q4_0",
        "q4_1",
        "q5_0",
        "q5_1",
        "q8_0",
        "q3_K_S",
        "q3_K_M",
        "q3_K_L",
        "q4_K_S",
        "Q4_K_M",
        "q5_k_s",
        "q5_K_M",
        "q6_K",
    ],
)
def test_quantize_every_type(workdir: Path, kind: str) -> None:
    from llama_cpp import Llama

    home = workdir / "home"
    out = hangar(home, "create", "quant", "-q", kind, cwd=workdir).stdout
    assert f"quantizing F32 model to {kind.upper()}" in out and "verifying conversion" in out
    layers, config, store = layers_of(home, "quant")
    assert config["file_type"] == kind.upper()
    assert "quantization        " + kind.upper() in hangar(home, "show", "quant").stdout
    path = store.blob_path(layers[0].digest)
    assert path.stat().st_size < (workdir / "tiny.gguf").stat().st_size / 3
    llm = Llama(str(path), n_ctx=64, verbose=False)
    try:
        tokens = []
        for token in llm.generate(llm.tokenize(b"hello"), temp=0):
            tokens.append(token)
            if len(tokens) == 4:
                break
        assert len(tokens) == 4
    finally:
        llm.close()


def test_quantize_errors(workdir: Path) -> None:
    home = workdir / "home"
    r = hangar(home, "create", "bad", "-q", "q9_z", cwd=workdir, check=False)
    assert r.returncode == 1 and "unsupported quantization type q9_z - supported types are q4_0" in r.stderr
    hangar(home, "create", "small", "-q", "q8_0", cwd=workdir)
    (workdir / "FromQuantized").write_text("FROM small\n")
    r = hangar(home, "create", "again", "-f", str(workdir / "FromQuantized"), "-q", "q4_0", check=False)
    assert r.returncode == 1
    assert "quantization is only supported for F16, BF16 and F32 models (this one is Q8_0)" in r.stderr
    # A quantized model asked for its own type is refused as Ollama refuses it (it checks the
    # source type first, #18 item 16); an unquantized one asked for its own type is unchanged.
    r = hangar(home, "create", "same", "-f", str(workdir / "FromQuantized"), "-q", "Q8_0", check=False)
    assert r.returncode == 1
    assert "quantization is only supported for F16, BF16 and F32 models (this one is Q8_0)" in r.stderr
    hangar(home, "create", "f32", "-q", "f32", cwd=workdir)
    f32, _, store = layers_of(home, "f32")
    assert store.blob_path(f32[0].digest).read_bytes() == (workdir / "tiny.gguf").read_bytes()


def test_create_from_an_existing_model_reuses_its_layers(workdir: Path) -> None:
    home = workdir / "home"
    hangar(home, "create", "parent", cwd=workdir)
    (workdir / "Child").write_text("FROM parent\nSYSTEM Be a child.\nPARAMETER top_k 5\nPARAMETER temperature 0.9\n")
    out = hangar(home, "create", "child", "-f", str(workdir / "Child")).stdout
    parent, _, store = layers_of(home, "parent")
    child, config, _ = layers_of(home, "child")
    by_type = {d.media_type: d for d in child}
    assert by_type[mt.OLLAMA_MODEL].digest == parent[0].digest
    assert by_type[mt.OLLAMA_MODEL].extra["from"] == "parent:latest"
    assert out.count("using existing layer") == 6  # model, template, two licences, messages, config
    assert store.blob_path(by_type[mt.OLLAMA_SYSTEM].digest).read_text() == "Be a child."
    params = json.loads(store.blob_path(by_type[mt.OLLAMA_PARAMS].digest).read_bytes())
    assert params == {"temperature": 0.9, "num_ctx": 256, "stop": ["<|end|>", "User:"], "top_k": 5}
    assert config["file_type"] == "F32" and config["model_family"] == "llama"
    # Only the new system and params layers were written: every blob is one of the two models'.
    on_disk = {p.name.removeprefix("sha256-") for p in store.blobs_dir.iterdir()}
    assert on_disk == {d.hex for d in store.referenced_digests()}
    assert len({d.digest for d in child} - {d.digest for d in parent}) == 2


def test_a_second_from_is_a_projector(workdir: Path) -> None:
    write_tiny_projector(workdir / "mmproj.gguf", text_dim=256)
    (workdir / "Vision").write_text("FROM ./tiny.gguf\nFROM ./mmproj.gguf\n")
    home = workdir / "home"
    hangar(home, "create", "seeing", "-f", str(workdir / "Vision"))
    layers, config, _ = layers_of(home, "seeing")
    assert [d.media_type for d in layers] == [mt.OLLAMA_MODEL, mt.OLLAMA_PROJECTOR]
    assert config["model_families"] == ["llama"]  # Ollama lists the families of model layers only
    assert "vision" in hangar(home, "show", "seeing").stdout


@pytest.mark.parametrize(
    ("modelfile", "message", "code"),
    [
        ("SYSTEM no from\n", "no FROM line", 2),
        ("FROM ./tiny.gguf\nPARAMETER num_ctx lots\n", "invalid int value [lots] for parameter 'num_ctx'", 2),
        ("FROM ./tiny.gguf\nTEMPLATE {{ .Prompt\n", "template error", 1),
        ("FROM ./tiny.gguf\nFROM ./missing-projector.gguf\n", "no such file", 1),
        ("FROM ./tiny.gguf\nADAPTER ./missing.gguf\n", "ADAPTER ./missing.gguf: no such file", 1),
        ("FROM ./tiny.gguf\nADAPTER ./tiny.gguf\n", "not a LoRA adapter GGUF", 1),
        ("FROM ./Modelfile\n", "not a GGUF file", 1),
        ("FROM ./safetensors\n", "converting the checkpoint failed: no config.json", 1),
        ("FROM ./pickles\n", "PyTorch pickles are not imported (they can run code)", 1),
    ],
)
def test_create_errors(workdir: Path, modelfile: str, message: str, code: int) -> None:
    (workdir / "safetensors").mkdir()
    (workdir / "safetensors" / "model.safetensors").write_bytes(b"{}")
    (workdir / "pickles").mkdir()
    (workdir / "pickles" / "pytorch_model.bin").write_bytes(b"not loaded")
    (workdir / "Modelfile").write_text(modelfile)
    r = hangar(workdir / "home", "create", "broken", cwd=workdir, check=False)
    assert r.returncode == code and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (workdir / "home" / "models" / "manifests").exists() or not list(
        (workdir / "home" / "models" / "manifests").rglob("broken")
    )


def test_from_a_missing_model_is_pulled(workdir: Path, registry) -> None:  # type: ignore[no-untyped-def]
    """FROM a model that is not in the store pulls it first (here from a registry another user
    pushed it to)."""
    alice = workdir / "alice"
    name = f"{registry.host}/team/base-{os.getpid()}:v1"
    hangar(alice, "create", name, cwd=workdir)
    hangar(alice, "push", name)
    bob = workdir / "bob"
    (workdir / "Derived").write_text(f"FROM {name}\nSYSTEM Derived.\n")
    out = hangar(bob, "create", "derived", "-f", str(workdir / "Derived")).stdout
    assert "pulling manifest" in out and out.rstrip().endswith("success")
    assert layers_of(bob, "derived")[0][0].digest == layers_of(alice, name)[0][0].digest
