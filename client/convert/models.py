"""Hugging Face checkpoints of the supported families, as llama.cpp lays them out in a GGUF:
hyperparameters, tensor names and the few tensor transforms each family needs.

- Llama (2, 3, 3.1, 3.2) and Mistral: llama.cpp's ``llama`` architecture; q and k projections are
  permuted from Hugging Face's rotary layout to llama.cpp's; Llama 3.1 rope scaling becomes the
  ``rope_freqs`` factors.
- Gemma and Gemma 2: norms store ``w`` where the model computes ``x * (1 + w)``: 1 is added.
- Phi-3: fused qkv and gate/up projections kept fused; LongRoPE factors as tensors."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from client.convert.safetensors import CheckpointError, TensorRef

Transform = Callable[[np.ndarray], np.ndarray]

LAYER_PARTS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.qkv_proj": "attn_qkv",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.gate_up_proj": "ffn_up",
}
TOP_LEVEL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class Tensor:
    """One GGUF tensor: its name, and how to make it from the checkpoint."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    source_dtype: str = "F32"


def rope_settings(config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope theta, rope scaling): from ``rope_theta``/``rope_scaling`` as checkpoints on the Hub
    write them, or from ``rope_parameters`` as transformers 5 does."""
    params = config.get("rope_parameters")
    if isinstance(params, dict):
        kind = params.get("rope_type") or params.get("type")
        return float(params.get("rope_theta", 10000.0)), (params if kind not in (None, "default") else {})
    return float(config.get("rope_theta", 10000.0)), dict(config.get("rope_scaling") or {})


class Family:
    """A checkpoint family: its GGUF architecture, keys and tensors."""

    arch = ""
    parts: ClassVar[dict[str, str]] = LAYER_PARTS

    def __init__(self, config: dict[str, Any]) -> None:
        self.c = config
        self.n_head = int(config["num_attention_heads"])
        self.n_head_kv = int(config.get("num_key_value_heads") or self.n_head)
        self.n_embd = int(config["hidden_size"])
        self.head_dim = int(config.get("head_dim") or self.n_embd // self.n_head)
        self.rope_theta, self.rope_scaling = rope_settings(config)

    def hparams(self, w: Any) -> None:
        c = self.c
        w.add_context_length(int(c.get("max_position_embeddings", 4096)))
        w.add_embedding_length(self.n_embd)
        w.add_block_count(int(c["num_hidden_layers"]))
        w.add_feed_forward_length(int(c["intermediate_size"]))
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
        if self.head_dim != self.n_embd // self.n_head:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)

    def transform(self, part: str) -> Transform | None:
        return None

    def extra_tensors(self) -> Iterator[Tensor]:
        return iter(())

    def tensors(self, refs: dict[str, TensorRef]) -> Iterator[Tensor]:
        for name, ref in refs.items():
            if name.endswith(SKIPPED_SUFFIXES):
                continue
            target, part = self._name(name)
            transform = self.transform(part)
            yield Tensor(target, ref.shape, _loader(ref, transform), ref.dtype)
        yield from self.extra_tensors()

    def _name(self, name: str) -> tuple[str, str]:
        if name in TOP_LEVEL:
            return TOP_LEVEL[name], name
        pieces = name.split(".")
        if len(pieces) >= 5 and pieces[0] == "model" and pieces[1] == "layers" and pieces[2].isdigit():
            part, kind = ".".join(pieces[3:-1]), pieces[-1]
            if part in self.parts and kind in ("weight", "bias"):
                return f"blk.{pieces[2]}.{self.parts[part]}.{kind}", part
        raise CheckpointError(f"unexpected tensor {name} for a {type(self).__name__} checkpoint")


def _loader(ref: TensorRef, transform: Transform | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        data = np.asarray(ref.load(), dtype=np.float32)
        return transform(data) if transform else data

    return load


def _constant(values: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: values


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary halves → llama.cpp's interleaved pairs, per head."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


class Llama(Family):
    arch = "llama"

    def hparams(self, w: Any) -> None:
        super().hparams(w)
        w.add_rope_dimension_count(self.head_dim)
        w.add_rope_freq_base(self.rope_theta)
        scaling = self.rope_scaling
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind == "linear":
            import gguf

            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(scaling["factor"]))
        elif kind not in (None, "default", "llama3"):
            raise CheckpointError(f"rope scaling {kind!r} is not supported for Llama checkpoints")

    def transform(self, part: str) -> Transform | None:
        if part == "self_attn.q_proj":
            return lambda w: permute(w, self.n_head)
        if part == "self_attn.k_proj":
            return lambda w: permute(w, self.n_head_kv)
        return None

    def extra_tensors(self) -> Iterator[Tensor]:
        scaling = self.rope_scaling
        if (scaling.get("rope_type") or scaling.get("type")) != "llama3":
            return
        factors = llama3_rope_factors(
            self.rope_theta,
            self.head_dim,
            float(scaling.get("factor", 8.0)),
            float(scaling.get("low_freq_factor", 1.0)),
            float(scaling.get("high_freq_factor", 4.0)),
            int(scaling.get("original_max_position_embeddings", 8192)),
        )
        yield Tensor("rope_freqs.weight", factors.shape, _constant(factors))


def llama3_rope_factors(
    base: float, dim: int, factor: float, low_freq_factor: float, high_freq_factor: float, old_context: int
) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's rope scaling (what llama.cpp reads as rope_freqs)."""
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low_wavelen, high_wavelen = old_context / low_freq_factor, old_context / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


class Gemma(Family):
    arch = "gemma"

    def hparams(self, w: Any) -> None:
        super().hparams(w)
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)

    def transform(self, part: str) -> Transform | None:
        if part.endswith(("norm", "layernorm")) or part == "model.norm.weight":
            return lambda w: w + 1.0
        return None

    def tensors(self, refs: dict[str, TensorRef]) -> Iterator[Tensor]:
        # The output projection is the embedding (tied); a copy named lm_head is dropped.
        return super().tensors({k: v for k, v in refs.items() if k != "lm_head.weight"})


class Gemma2(Gemma):
    arch = "gemma2"
    parts: ClassVar[dict[str, str]] = {
        **LAYER_PARTS,
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    }

    def hparams(self, w: Any) -> None:
        super().hparams(w)
        c = self.c
        if c.get("attn_logit_softcapping") is not None:
            w.add_attn_logit_softcapping(float(c["attn_logit_softcapping"]))
        if c.get("final_logit_softcapping") is not None:
            w.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
        if c.get("sliding_window"):
            w.add_sliding_window(int(c["sliding_window"]))
        scalar = c.get("query_pre_attn_scalar")
        if scalar is not None and int(scalar) not in (self.head_dim, self.n_embd // self.n_head):
            raise CheckpointError("query_pre_attn_scalar must equal head_dim or hidden_size / heads for llama.cpp")


class Phi3(Family):
    arch = "phi3"

    def hparams(self, w: Any) -> None:
        super().hparams(w)
        c = self.c
        params: dict[str, Any] = c["rope_parameters"] if isinstance(c.get("rope_parameters"), dict) else {}
        partial = c.get("partial_rotary_factor") or params.get("partial_rotary_factor") or 1.0
        rotary = int(self.head_dim * float(partial))
        w.add_rope_dimension_count(rotary)
        w.add_rope_freq_base(self.rope_theta)
        if c.get("original_max_position_embeddings"):
            w.add_rope_scaling_orig_ctx_len(int(c["original_max_position_embeddings"]))
        if c.get("sliding_window"):
            w.add_sliding_window(int(c["sliding_window"]))
        scaling = self.rope_scaling
        if scaling.get("type") in ("longrope", "su") or scaling.get("rope_type") == "longrope":
            original = c["original_max_position_embeddings"]
            scale = c["max_position_embeddings"] / original
            attn = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(original))
            w.add_rope_scaling_attn_factors(attn)
        elif scaling:
            raise CheckpointError(f"rope scaling {scaling} is not supported for Phi-3 checkpoints")

    def extra_tensors(self) -> Iterator[Tensor]:
        scaling = self.rope_scaling
        for key, name in (("long_factor", "rope_factors_long.weight"), ("short_factor", "rope_factors_short.weight")):
            if key in scaling:
                values = np.array(scaling[key], dtype=np.float32)
                yield Tensor(name, values.shape, _constant(values))


FAMILIES: dict[str, type[Family]] = {
    "LlamaForCausalLM": Llama,
    "MistralForCausalLM": Llama,
    "GemmaForCausalLM": Gemma,
    "Gemma2ForCausalLM": Gemma2,
    "Phi3ForCausalLM": Phi3,
}


def family_for(config: dict[str, Any]) -> Family:
    names = config.get("architectures") or []
    for name in names:
        if name in FAMILIES:
            return FAMILIES[name](config)
    supported = ", ".join(FAMILIES)
    raise CheckpointError(f"unsupported architecture {names or '(none named)'}: supported are {supported}")
