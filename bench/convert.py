"""Safetensors → GGUF conversion: time and peak memory of `hangar create` on a ≥1 GB random
Llama-like BF16 checkpoint, against llama.cpp's own ``convert_hf_to_gguf.py`` on the same
checkpoint in the same run; writes docs/benchmarks.md's ``convert`` section.

The checkpoint (12 layers of 2048 wide, 16 heads, 8 KV heads, feed-forward 5632: 1.2 GB in
BF16, one file) is written once into bench/out/convert with random weights, streamed tensor by
tensor (never whole in memory), with a small SentencePiece-style BPE tokenizer whose size is the
embedding's rows. llama.cpp's script is the one vendored in the llama-cpp-python sdist this
project pins (``.cache/llama_cpp_python-0.3.36.tar.gz``, fetched with ``pip download`` when
missing, which takes minutes); it runs with this venv's torch and transformers and its own
``gguf-py``, ``--outtype auto`` (BF16 for a BF16 source, as Hangar keeps it).

Each side runs as its own process, alternating which goes first, after the checkpoint has been
read once (both start with it in the page cache); wall time and the process's peak resident
memory (``ru_maxrss`` from ``wait4``, which counts mapped file pages while they are mapped) are
taken per run, medians reported. `hangar create` runs end to end against an empty store
(conversion, the load check, hashing the GGUF into the store); ``convert_model`` alone is the
conversion only.

Usage: python bench/convert.py [--runs N] [--layers N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, ROOT, GiB, MiB, machine, write_section

LLAMA_CPP_PYTHON = "0.3.36"
SDIST = ROOT / ".cache" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SCRIPT_DIR = ROOT / ".cache" / f"llama.cpp-{LLAMA_CPP_PYTHON}"


def write_checkpoint(folder: Path, layers: int, hidden: int = 2048, ff: int = 5632) -> int:
    """A random Llama checkpoint in BF16 (one safetensors file); returns its size in bytes."""
    from tests.checkpoints import write_spm_json_tokenizer

    marker = folder / f".done-{layers}"
    if marker.exists():
        return (folder / "model.safetensors").stat().st_size
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    vocab = write_spm_json_tokenizer(folder, ["<unk>", "<s>", "</s>"], "<s>", "</s>", "", prepend=True, added=[])
    heads, kv_heads = 16, 8
    kv = hidden // heads * kv_heads
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (ff, hidden), p + "mlp.up_proj.weight": (ff, hidden),
            p + "mlp.down_proj.weight": (hidden, ff), p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }  # fmt: skip
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    header: dict[str, object] = {}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            values = rng.standard_normal(shape, dtype=np.float32) * (0.02 if len(shape) > 1 else 1.0)
            f.write((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())  # BF16: the high half
    marker.touch()
    return (folder / "model.safetensors").stat().st_size


def llama_cpp_script() -> Path:
    """convert_hf_to_gguf.py with its ``conversion`` package and ``gguf-py``, from the sdist."""
    script = SCRIPT_DIR / "convert_hf_to_gguf.py"
    if script.exists():
        return script
    if not SDIST.exists():
        print(f"$ pip download llama-cpp-python=={LLAMA_CPP_PYTHON} --no-binary :all: (minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--no-deps",
                        "--no-binary", ":all:", "-d", str(SDIST.parent)], check=True)  # fmt: skip
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    with tarfile.open(SDIST) as tar:
        for member in tar.getmembers():
            rest = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and rest.startswith(wanted) and member.isfile():
                member.name = rest
                tar.extract(member, SCRIPT_DIR, filter="data")
    return script


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        assert proc.stderr is not None
        raise RuntimeError(f"{cmd[:4]} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return elapsed, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    work = OUT / "convert"
    ckpt = work / "ckpt"
    print("writing the checkpoint …", flush=True)
    size = write_checkpoint(ckpt, args.layers)
    script = llama_cpp_script()
    with open(ckpt / "model.safetensors", "rb") as f:  # into the page cache for both sides
        while f.read(64 * MiB):
            pass
    (work / "Modelfile").write_text(f"FROM {ckpt}\n")
    results: dict[str, list[tuple[float, int]]] = {"hangar create": [], "convert_model": [], "llama.cpp": []}
    out_sizes: dict[str, int] = {}
    for run in range(args.runs):
        order = list(results) if run % 2 == 0 else list(reversed(results))
        for side in order:
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                env = {**os.environ, "HANGAR_HOME": str(Path(tmp) / "home"), "HANGAR_HOST": "127.0.0.1:9"}
                env.pop("HANGAR_MODELS", None)
                out = Path(tmp) / "out.gguf"
                if side == "hangar create":
                    cmd = [sys.executable, "-m", "cli.main", "create", "bench-convert", "-f", str(work / "Modelfile")]
                elif side == "convert_model":
                    code = "import sys; from pathlib import Path; from client.convert import convert_model; "
                    code += "convert_model(Path(sys.argv[1]), Path(sys.argv[2]))"
                    cmd = [sys.executable, "-c", code, str(ckpt), str(out)]
                else:
                    cmd = [sys.executable, str(script), str(ckpt), "--outfile", str(out), "--outtype", "auto"]
                elapsed, peak = measure(cmd, env)
                if out.exists():
                    out_sizes[side] = out.stat().st_size
                results[side].append((elapsed, peak))
                print(f"run {run + 1} {side}: {elapsed:.1f} s, peak RSS {peak / MiB:.0f} MiB", flush=True)
    rows = []
    reference = statistics.median(t for t, _ in results["llama.cpp"])
    for side, runs in results.items():
        t = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        rows.append(f"| {side} | {t:.1f} s | {reference / t:.2f}× | {rss / MiB:,.0f} MiB | {rss / size:.2f}× |")
    body = f"""## Conversion (`python bench/convert.py`, issue #15)

A random Llama-like checkpoint, {args.layers} layers of 2048 (16 heads, 8 KV heads, feed-forward
5632), BF16 in one safetensors file of {size / GiB:.2f} GiB ({size / 1e9:.2f} GB), converted to a
BF16 GGUF by each side as its own process, {args.runs} runs each alternating the order, the
checkpoint already in the page cache; medians. `hangar create` is the whole create into an empty
store (conversion, llama.cpp's load check, the GGUF hashed into the store); `convert_model` the
conversion alone; llama.cpp is the `convert_hf_to_gguf.py` vendored in llama-cpp-python
{LLAMA_CPP_PYTHON} (`--outtype auto`), with this venv's torch {_version("torch")} and
transformers {_version("transformers")}. Peak memory is the process's peak resident set (mapped
checkpoint pages count while mapped). Machine: {machine()}.

| | time | speed vs llama.cpp | peak RSS | peak / checkpoint |
|---|---|---|---|---|
{chr(10).join(rows)}

Output sizes: {", ".join(f"{k} {v / GiB:.2f} GiB" for k, v in out_sizes.items())}. Besides converting,
`hangar create` copies the checkpoint into the store as blobs (what Ollama's CLI uploads; `--link`
hard-links instead), hashes it and the GGUF, and loads the vocabulary in llama.cpp. Half-precision
matrices are copied from the checkpoint's bytes and one tensor is in memory at a time, so the peak
stays a small fraction of the checkpoint; llama.cpp's script goes through torch.
"""
    write_section("convert", body)
    print(body)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
