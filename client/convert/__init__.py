"""Hugging Face safetensors checkpoints to GGUF, with numpy and the ``gguf`` package (no torch).

``convert_model(folder, out)`` writes a model GGUF (F32, F16 or BF16 as the checkpoint stores its
weights; norms and other vectors in F32) from ``config.json``, the ``*.safetensors`` shards and the
tokenizer files; ``convert_adapter`` writes a LoRA adapter GGUF from a PEFT ``adapter_config.json``
and ``adapter_model.safetensors``. Tensors are read and written one at a time. Decoder families
are in ``models``; embedding models (sentence-transformers folders: BERT, nomic-bert,
EmbeddingGemma) in ``encoders``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from client.convert.encoders import model_family
from client.convert.models import Family, Tensor, family_for
from client.convert.safetensors import CheckpointError, read_checkpoint

__all__ = ["CheckpointError", "convert_adapter", "convert_model", "is_checkpoint"]

Progress = Callable[[int, int], None]  # tensors written, tensors in all


def is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def convert_model(folder: Path, out: Path, progress: Progress | None = None) -> str:
    """Write the checkpoint in ``folder`` as a GGUF at ``out``; returns the GGUF architecture."""
    import gguf

    config = _config(folder / "config.json")
    family = model_family(config)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise CheckpointError("no *.safetensors files next to config.json")
    family.prepare(folder)
    refs = family.select(read_checkpoint(shards))
    embed = refs.get(family.EMBEDDING)
    if embed is None:
        raise CheckpointError(f"the checkpoint has no {family.EMBEDDING}")
    vocab = family.vocab(folder, embed.shape[0])
    tensors = list(family.tensors(refs))
    kind = _weight_type(tensors)

    w = gguf.GGUFWriter(str(out), family.arch)
    w.add_name(str(config.get("_name_or_path") or folder.name))
    family.hparams(w)
    w.add_vocab_size(embed.shape[0])
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                     "BF16": gguf.LlamaFileType.MOSTLY_BF16}[kind])  # fmt: skip
    family.write_vocab(w, vocab)
    _write_tensors(w, tensors, kind, progress)
    return family.arch


def convert_adapter(folder: Path, out: Path, base_config: dict[str, Any], progress: Progress | None = None) -> None:
    """A PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) for a model
    of ``base_config`` as a GGUF LoRA adapter."""
    import gguf

    adapter = _config(folder / "adapter_config.json")
    family = family_for(base_config)
    shards = sorted(folder.glob("adapter_model*.safetensors"))
    if not shards:
        raise CheckpointError("no adapter_model.safetensors next to adapter_config.json")
    refs = read_checkpoint(shards)
    rank = int(adapter.get("r", 8))
    alpha = float(adapter.get("lora_alpha", rank))
    tensors = list(_lora_tensors(family, refs))
    w = gguf.GGUFWriter(str(out), family.arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    _write_tensors(w, tensors, "F32", progress)


def _lora_tensors(family: Family, refs: dict[str, Any]) -> Any:
    """PEFT names (``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight``) → llama.cpp
    names (``blk.N.attn_q.weight.lora_a``). B rows follow their projection's permutation. The
    experts' A and B matrices of a mixture of experts are stacked as their weights are
    (``blk.N.ffn_gate_exps.weight.lora_a``: ``[n_expert, r, cols]``)."""
    from client.convert.models import _loader, stacked_experts

    if family.EXPERT_MODULE:
        consumed: set[str] = set()
        for marker, suffix in ((".lora_A.weight", "lora_a"), (".lora_B.weight", "lora_b")):
            by_weight = {n.removeprefix("base_model.model.")[: -len(marker)] + ".weight": n
                         for n in refs if n.endswith(marker)}  # fmt: skip
            others, stacked = stacked_experts({w: refs[n] for w, n in by_weight.items()}, family.EXPERT_MODULE,
                                              family.EXPERT_PARTS, family.n_expert)  # fmt: skip
            consumed |= {n for w, n in by_weight.items() if w not in others}
            for t in stacked:
                yield Tensor(f"{t.name}.{suffix}", t.shape, t.load, t.source_dtype)
        refs = {n: r for n, r in refs.items() if n not in consumed}
    for name, ref in refs.items():
        base = name.removeprefix("base_model.model.")
        for marker, suffix in ((".lora_A.weight", "lora_a"), (".lora_B.weight", "lora_b")):
            if base.endswith(marker):
                weight_name = base[: -len(marker)] + ".weight"
                target, part = family._name(weight_name)
                transform = family.transform(part) if suffix == "lora_b" else None
                if part.endswith("norm"):
                    raise CheckpointError(f"{name}: LoRA on a norm is not supported")
                yield Tensor(f"{target}.{suffix}", ref.shape, _loader(ref, transform), ref.dtype)
                break
        else:
            raise CheckpointError(f"unexpected tensor {name} in a LoRA adapter (only lora_A and lora_B)")


def _config(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no {path.name}") from None
    except ValueError:
        raise CheckpointError(f"{path.name} is not valid JSON") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path.name} is not a JSON object")
    return value


def _weight_type(tensors: list[Tensor]) -> str:
    """The checkpoint's weight precision, kept for the matrices: F32, F16 or BF16."""
    kinds = {t.source_dtype for t in tensors if len(t.shape) >= 2}
    for kind in ("F32", "BF16", "F16"):
        if kind in kinds:
            return kind
    raise CheckpointError(f"weights of type {sorted(kinds)} are not supported (F32, F16 or BF16)")


def _write_tensors(w: Any, tensors: list[Tensor], kind: str, progress: Progress | None) -> None:
    import gguf

    plans: list[tuple[Tensor, Any, Any]] = []
    for t in tensors:
        if len(t.shape) < 2 or kind == "F32":
            plans.append((t, np.float32, None))
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), int(np.prod(t.shape)) * 4)
        elif kind == "F16":
            plans.append((t, np.float16, None))
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float16), int(np.prod(t.shape)) * 2)
        else:
            byte_shape = (*t.shape[:-1], t.shape[-1] * 2)
            plans.append((t, None, gguf.GGMLQuantizationType.BF16))
            w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), int(np.prod(t.shape)) * 2,
                              raw_dtype=gguf.GGMLQuantizationType.BF16)  # fmt: skip
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i, (t, dtype, raw) in enumerate(plans):
        if t.raw is not None and len(t.shape) >= 2 and t.source_dtype == kind and kind in ("F16", "BF16"):
            data = t.raw()  # the checkpoint's own half-precision bits: copied, not converted twice
            if tuple(data.shape) != tuple(t.shape):
                raise CheckpointError(f"{t.name}: shape {data.shape}, expected {t.shape}")
            w.write_tensor_data(data)
        else:
            data = t.load()
            if tuple(data.shape) != tuple(t.shape):
                raise CheckpointError(f"{t.name}: shape {data.shape}, expected {t.shape}")
            w.write_tensor_data(gguf.quants.quantize(data, raw) if raw is not None else data.astype(dtype))
        if progress:
            progress(i + 1, len(plans))
    w.close()
