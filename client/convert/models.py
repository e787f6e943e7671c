"""Hugging Face checkpoints of the supported families, as llama.cpp lays them out in a GGUF:
hyperparameters, tensor names and the few tensor transforms each family needs.

- Llama (2, 3, 3.1, 3.2) and Mistral: llama.cpp's ``llama`` architecture; q and k projections are
  permuted from Hugging Face's rotary layout to llama.cpp's; Llama 3.1 rope scaling becomes the
  ``rope_freqs`` factors.
- Gemma and Gemma 2: norms store ``w`` where the model computes ``x * (1 + w)``: 1 is added.
- Phi-3: fused qkv and gate/up projections kept fused; LongRoPE factors as tensors.
- Qwen2/2.5, Qwen3 and Qwen3 MoE: as they are (llama.cpp rotates their q and k in Hugging Face's
  layout); Qwen3's q/k norms; Qwen3 MoE's experts stacked as Mixtral's.
- Gemma 3 (text; of the multimodal checkpoints, the text model): Gemma 2's layout plus q/k norms;
  the local/global layer pattern, the two rope bases and the global layers' linear rope scaling as
  llama.cpp's keys.
- Mixtral: Llama plus experts, stacked per layer into the 3-d ``ffn_*_exps`` tensors llama.cpp
  expects, and the router as ``ffn_gate_inp``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from client.convert.safetensors import CheckpointError, TensorRef
from client.convert.tokenizer import Vocab, load_vocab, write_vocab

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
    # The checkpoint's bytes, for a tensor written unchanged in its own type (no transform): a
    # BF16 or F16 matrix is copied instead of widened to float32 and rounded back.
    raw: Callable[[], np.ndarray] | None = None


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
    # A mixture of experts: the layer's module holding ``experts.E.<proj>``, the projections'
    # stacked GGUF names, and how many experts.
    EXPERT_MODULE = ""
    EXPERT_PARTS: ClassVar[dict[str, str]] = {}
    n_expert = 0
    # The token embedding's name in the checkpoint (its rows: the vocabulary size).
    EMBEDDING = "model.embed_tokens.weight"

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

    def prepare(self, folder: Path) -> None:
        """Read what the family needs from the checkpoint folder besides config.json (the
        sentence-transformers modules of an embedding model)."""

    def vocab(self, folder: Path, size: int) -> Vocab:
        return load_vocab(folder, size)

    def write_vocab(self, w: Any, vocab: Vocab) -> None:
        write_vocab(w, vocab)

    def select(self, refs: dict[str, TensorRef]) -> dict[str, TensorRef]:
        """The checkpoint's tensors that make the model, under the names ``_name`` knows."""
        return refs

    def extra_tensors(self) -> Iterator[Tensor]:
        return iter(())

    def tensors(self, refs: dict[str, TensorRef]) -> Iterator[Tensor]:
        for name, ref in refs.items():
            if name.endswith(SKIPPED_SUFFIXES):
                continue
            target, part = self._name(name)
            transform = self.transform(part)
            yield Tensor(target, ref.shape, _loader(ref, transform), ref.dtype, None if transform else ref.load_raw)
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


class Qwen2(Family):
    """Qwen2/2.5 (biases on q, k and v) and, through Qwen3, Qwen3. llama.cpp runs them with NeoX
    rotary embeddings, Hugging Face's layout: q and k are not permuted."""

    arch = "qwen2"

    def hparams(self, w: Any) -> None:
        super().hparams(w)
        w.add_rope_freq_base(self.rope_theta)
        rope_hparams(w, self.rope_scaling, type(self).__name__)
        if self.c.get("use_sliding_window") and self.c.get("sliding_window"):
            raise CheckpointError("sliding-window attention is not supported for Qwen checkpoints by llama.cpp")


class Qwen3(Qwen2):
    arch = "qwen3"
    parts: ClassVar[dict[str, str]] = {
        **LAYER_PARTS,
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
    }

    def hparams(self, w: Any) -> None:
        super().hparams(w)
        # Qwen3's head_dim is its own (128 for a 1024-wide 0.6B): always written.
        if self.head_dim == self.n_embd // self.n_head:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)


def rope_hparams(w: Any, scaling: dict[str, Any], family: str) -> None:
    """Linear and YaRN rope scaling as llama.cpp's keys; other kinds are refused."""
    import gguf

    kind = scaling.get("rope_type") or scaling.get("type")
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(scaling["factor"]))
        if scaling.get("original_max_position_embeddings"):
            w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    elif kind not in (None, "default"):
        raise CheckpointError(f"rope scaling {kind!r} is not supported for {family} checkpoints")


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


class Qwen3Moe(Qwen3):
    """Qwen3 MoE (``Qwen3MoeForCausalLM``): Qwen3's attention; per layer a router (``mlp.gate``)
    and experts ``mlp.experts.E.gate_proj/up_proj/down_proj``, stacked as for Mixtral. llama.cpp
    renormalises the chosen experts' weights (``norm_topk_prob``) and wants every layer sparse."""

    arch = "qwen3moe"
    EXPERT_MODULE = "mlp"
    EXPERT_PARTS: ClassVar[dict[str, str]] = {
        "gate_proj": "ffn_gate_exps",
        "up_proj": "ffn_up_exps",
        "down_proj": "ffn_down_exps",
    }
    parts: ClassVar[dict[str, str]] = {**Qwen3.parts, "mlp.gate": "ffn_gate_inp"}

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.n_expert = int(config.get("num_experts") or config["num_local_experts"])
        if config.get("mlp_only_layers") or int(config.get("decoder_sparse_step", 1)) != 1:
            raise CheckpointError("Qwen3 MoE checkpoints with dense layers are not supported by llama.cpp")
        if config.get("norm_topk_prob") is False:
            raise CheckpointError("Qwen3 MoE without norm_topk_prob is not supported by llama.cpp")

    def hparams(self, w: Any) -> None:
        super().hparams(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(int(self.c["num_experts_per_tok"]))
        w.add_expert_feed_forward_length(int(self.c["moe_intermediate_size"]))

    def tensors(self, refs: dict[str, TensorRef]) -> Iterator[Tensor]:
        others, stacked = stacked_experts(refs, self.EXPERT_MODULE, self.EXPERT_PARTS, self.n_expert)
        yield from super().tensors(others)
        yield from stacked


class Gemma3(Gemma2):
    """Gemma 3 text models (``Gemma3ForCausalLM``). Local (sliding-window) and global layers
    differ in their rope base, and only global layers have rope scaling; llama.cpp reads the
    pattern per layer, the local base as ``rope.freq_base_swa`` and the scaling as the model's
    (applied to global layers only). llama.cpp scales queries by 1/sqrt(head_dim) (by
    1/sqrt(hidden/heads) for the 62-layer 27B): a checkpoint asking for another scale is refused."""

    arch = "gemma3"
    parts: ClassVar[dict[str, str]] = {
        **Gemma2.parts,
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
    }
    # Gemma3TextConfig's defaults: the Hub's configs leave out what equals them (head_dim, heads…).
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    }  # fmt: skip

    def __init__(self, config: dict[str, Any]) -> None:
        if "rope_parameters" not in config:
            config = {"rope_theta": 1000000.0, **config}
        super().__init__({**self.DEFAULTS, **config})

    def hparams(self, w: Any) -> None:
        Gemma.hparams(self, w)
        c = self.c
        n_layer = int(c["num_hidden_layers"])
        if c.get("attn_logit_softcapping") is not None:
            raise CheckpointError("attention logit soft-capping is not supported for Gemma 3 by llama.cpp")
        if c.get("final_logit_softcapping") is not None:
            w.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
        scalar = c.get("query_pre_attn_scalar")
        expected = self.n_embd // self.n_head if n_layer == 62 else self.head_dim
        if scalar is not None and int(scalar) != expected:
            raise CheckpointError(f"query_pre_attn_scalar {scalar}: llama.cpp scales queries by 1/sqrt({expected})")
        global_theta, global_scaling, local_theta = self._rope()
        w.add_rope_freq_base(global_theta)
        w.add_rope_freq_base_swa(local_theta)
        rope_hparams(w, global_scaling, "Gemma 3")
        sliding = self._sliding_layers(n_layer)
        # llama.cpp aborts on a sliding window that no layer uses: then none is written.
        if c.get("sliding_window") and any(sliding):
            w.add_sliding_window(int(c["sliding_window"]))
            w.add_sliding_window_pattern(sliding)

    def _sliding_layers(self, n_layer: int) -> list[bool]:
        """Which layers use the sliding window: ``layer_types`` (transformers 5), else every
        layer but each ``sliding_window_pattern``-th (the Hub's Gemma 3 configs: 6)."""
        types = self.c.get("layer_types")
        if isinstance(types, list) and len(types) == n_layer:
            return [t == "sliding_attention" for t in types]
        period = int(self.c.get("sliding_window_pattern") or self.c.get("_sliding_window_pattern") or 6)
        return [(i + 1) % period != 0 for i in range(n_layer)]

    def _rope(self) -> tuple[float, dict[str, Any], float]:
        """(global base, global scaling, local base): from ``rope_parameters`` per layer type
        (transformers 5), or ``rope_theta``, ``rope_scaling`` and ``rope_local_base_freq``."""
        params = self.c.get("rope_parameters")
        if isinstance(params, dict) and "full_attention" in params:
            full, local = params["full_attention"], params.get("sliding_attention") or {}
            if (local.get("rope_type") or "default") != "default":
                raise CheckpointError("rope scaling on Gemma 3's local layers is not supported by llama.cpp")
            kind = full.get("rope_type") or full.get("type")
            return (float(full.get("rope_theta", 1e6)), full if kind not in (None, "default") else {},
                    float(local.get("rope_theta", 10000.0)))  # fmt: skip
        return self.rope_theta, self.rope_scaling, float(self.c.get("rope_local_base_freq", 10000.0))


class Gemma3Vision(Gemma3):
    """``Gemma3ForConditionalGeneration`` (Gemma 3 4B, 12B, 27B): its text model, as
    ``Gemma3ForCausalLM`` would hold it (``text_config``; ``language_model.model.*`` tensors, or
    ``model.language_model.*`` as transformers 5 names them). The vision tower and projector are
    left out: llama.cpp runs them from a separate projector GGUF (a second ``FROM``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        text = config.get("text_config")
        if not isinstance(text, dict):
            raise CheckpointError("a Gemma3ForConditionalGeneration config.json without text_config")
        super().__init__({**text, "architectures": ["Gemma3ForCausalLM"]})

    PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                ("language_model.lm_head.", "lm_head."))  # fmt: skip
    DROPPED = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")

    def select(self, refs: dict[str, TensorRef]) -> dict[str, TensorRef]:
        return {self._text_name(name): ref for name, ref in refs.items() if not name.startswith(self.DROPPED)}

    def _text_name(self, name: str) -> str:
        for old, new in self.PREFIXES:
            if name.startswith(old):
                return new + name[len(old) :]
        return name

    def _name(self, name: str) -> tuple[str, str]:
        return super()._name(self._text_name(name))  # also for a LoRA adapter's names


class Mixtral(Llama):
    """Mixtral: Llama's attention, and per layer a router (``block_sparse_moe.gate``) and experts
    ``experts.E.w1/w2/w3`` (gate, down, up), which llama.cpp wants stacked: one
    ``[n_expert, rows, cols]`` tensor per projection and layer, made one layer at a time."""

    EXPERT_MODULE = "block_sparse_moe"
    EXPERT_PARTS: ClassVar[dict[str, str]] = {"w1": "ffn_gate_exps", "w2": "ffn_down_exps", "w3": "ffn_up_exps"}
    parts: ClassVar[dict[str, str]] = {**LAYER_PARTS, "block_sparse_moe.gate": "ffn_gate_inp"}

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.n_expert = int(config["num_local_experts"])
        self.n_expert_used = int(config["num_experts_per_tok"])

    def hparams(self, w: Any) -> None:
        super().hparams(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)

    def tensors(self, refs: dict[str, TensorRef]) -> Iterator[Tensor]:
        others, stacked = stacked_experts(refs, self.EXPERT_MODULE, self.EXPERT_PARTS, self.n_expert)
        yield from super().tensors(others)
        yield from stacked


def stacked_experts(
    refs: dict[str, TensorRef], module: str, parts: dict[str, str], n_expert: int
) -> tuple[dict[str, TensorRef], list[Tensor]]:
    """The checkpoint's per-expert matrices ``model.layers.N.<module>.experts.E.<proj>.weight``
    as llama.cpp's stacked ``blk.N.<part>.weight`` (``[n_expert, rows, cols]``, loaded when
    written), and the other tensors."""
    experts: dict[tuple[str, str], dict[int, TensorRef]] = {}
    others: dict[str, TensorRef] = {}
    for name, ref in refs.items():
        pieces = name.split(".")
        if len(pieces) == 8 and pieces[3:5] == [module, "experts"] and pieces[6] in parts:
            if pieces[7] != "weight" or not pieces[5].isdigit():
                raise CheckpointError(f"unexpected tensor {name} in a mixture of experts")
            experts.setdefault((pieces[2], pieces[6]), {})[int(pieces[5])] = ref
        else:
            others[name] = ref
    stacked = []
    for (layer, proj), by_expert in sorted(experts.items(), key=lambda kv: (int(kv[0][0]), kv[0][1])):
        if sorted(by_expert) != list(range(n_expert)):
            found = sorted(by_expert)
            raise CheckpointError(f"layer {layer}: experts {found} of {proj}, not 0..{n_expert - 1}")
        matrices = [by_expert[e] for e in range(n_expert)]
        if len({m.shape for m in matrices}) != 1:
            raise CheckpointError(f"layer {layer}: the experts' {proj} differ in shape")
        shape = (n_expert, *matrices[0].shape)
        stacked.append(Tensor(f"blk.{layer}.{parts[proj]}.weight", shape, _stacked(matrices), matrices[0].dtype))
    return others, stacked


def _stacked(refs: list[TensorRef]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        out = np.empty((len(refs), *refs[0].shape), dtype=np.float32)
        for i, ref in enumerate(refs):  # one expert at a time: one layer's stack is held, no more
            out[i] = ref.load()
        return out

    return load


FAMILIES: dict[str, type[Family]] = {
    "LlamaForCausalLM": Llama,
    "MistralForCausalLM": Llama,
    "GemmaForCausalLM": Gemma,
    "Gemma2ForCausalLM": Gemma2,
    "Phi3ForCausalLM": Phi3,
    "Qwen2ForCausalLM": Qwen2,
    "Qwen3ForCausalLM": Qwen3,
    "Qwen3MoeForCausalLM": Qwen3Moe,
    "Gemma3ForCausalLM": Gemma3,
    "Gemma3ForConditionalGeneration": Gemma3Vision,
    "MixtralForCausalLM": Mixtral,
}


def family_for(config: dict[str, Any]) -> Family:
    names = config.get("architectures") or []
    for name in names:
        if name in FAMILIES:
            return FAMILIES[name](config)
    supported = ", ".join(FAMILIES)
    raise CheckpointError(f"unsupported architecture {names or '(none named)'}: supported are {supported}")
