"""Embedding models as sentence-transformers saves them, as the GGUF encoders llama.cpp runs:
BERT (``BertModel``, the ``bert`` architecture), nomic-bert (``NomicBertModel``, ``nomic-bert``)
and EmbeddingGemma (``Gemma3TextModel`` with its dense projection heads, ``gemma-embedding``).

A sentence-transformers folder is the encoder's checkpoint (``config.json``, ``*.safetensors``, the
tokenizer) plus ``modules.json`` naming its modules in order: the transformer, a ``Pooling`` module
(``1_Pooling/config.json``: mean, CLS or last-token pooling), EmbeddingGemma's two ``Dense``
projections (``2_Dense``, ``3_Dense``) and ``Normalize``. The pooling becomes the GGUF's
``pooling_type`` and the projections its ``dense_2``/``dense_3`` tensors, as llama.cpp's
``convert_hf_to_gguf.py`` writes them; what llama.cpp cannot compute (max pooling, a projection
with a bias or an activation, other modules) is refused. Normalisation has no key: Ollama's
``/api/embed`` always returns unit vectors.

BERT's WordPiece vocabulary is written as llama.cpp's ``bert`` tokenizer: a word-initial piece
carries a "▁" prefix instead of continuations carrying "##", and the BertNormalizer's lowercasing
and accent stripping become ``tokenizer.ggml.normalizer.*``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from client.convert.models import FAMILIES, Family, Gemma3, Tensor, _loader, family_for
from client.convert.safetensors import CheckpointError, TensorRef, read_index
from client.convert.tokenizer import CONTROL, NORMAL, UNUSED, Vocab, write_vocab

# gguf.PoolingType's values for the modes a sentence-transformers Pooling config can name.
POOLING = {"mean": 1, "cls": 2, "lasttoken": 3}
POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "lasttoken",
}
UNSUPPORTED_POOLING = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)


@dataclass
class Dense:
    """A sentence-transformers ``Dense`` module: a bias-free linear projection of the pooled vector."""

    path: str
    in_features: int
    out_features: int
    weight: TensorRef


@dataclass
class Modules:
    """What ``modules.json`` and the modules' folders say about the vectors."""

    pooling: str  # "mean", "cls" or "lasttoken"
    normalize: bool
    dense: list[Dense] = field(default_factory=list)


def read_modules(folder: Path, arch: str, max_dense: int) -> Modules:
    """The sentence-transformers modules of ``folder``; refused unless llama.cpp's ``arch`` can
    compute them (the transformer, one pooling, up to ``max_dense`` projections, normalisation)."""
    doc = _json(folder / "modules.json", f"an embedding model ({arch}) needs sentence-transformers' modules.json "
                "and its Pooling module, which say how the token vectors are pooled")  # fmt: skip
    if not isinstance(doc, list) or not all(isinstance(m, dict) for m in doc):
        raise CheckpointError("modules.json is not a list of modules")
    pooling: str | None = None
    normalize = False
    dense: list[Dense] = []
    for i, module in enumerate(doc):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = str(module.get("path", ""))
        if kind == "Transformer" and i == 0:
            if path not in ("", "."):
                raise CheckpointError(f"modules.json: the transformer is in {path!r}; only one at the folder's root "
                                      "is supported")  # fmt: skip
        elif kind == "Pooling" and pooling is None:
            pooling = _pooling(folder, path)
        elif kind == "Dense" and pooling is not None and not normalize and len(dense) < max_dense:
            dense.append(_dense(folder, path))
        elif kind == "Normalize" and pooling is not None:
            normalize = True
        else:
            supported = f"the transformer, one Pooling{f', up to {max_dense} Dense' if max_dense else ''}, Normalize"
            raise CheckpointError(f"modules.json: module {i} ({module.get('type')}) is not supported for {arch} "
                                  f"by llama.cpp (supported: {supported})")  # fmt: skip
    if pooling is None:
        raise CheckpointError("modules.json names no Pooling module: how the token vectors are pooled is unknown")
    return Modules(pooling, normalize, dense)


def _module_folder(folder: Path, path: str) -> Path:
    if not path or path.startswith("/") or ".." in Path(path).parts:
        raise CheckpointError(f"modules.json: {path!r} is not a module folder")
    return folder / path


def _pooling(folder: Path, path: str) -> str:
    config = _json(_module_folder(folder, path) / "config.json", f"no {path}/config.json (the Pooling module's)")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}/config.json is not a JSON object")
    modes = [mode for key, mode in POOLING_KEYS.items() if config.get(key)]
    if isinstance(config.get("pooling_mode"), str):  # the newer single-key form
        modes.append(config["pooling_mode"])
    refused = [key for key in UNSUPPORTED_POOLING if config.get(key)]
    if refused or len(set(modes)) != 1 or modes[0] not in POOLING:
        wanted = ", ".join(refused + modes) or "none"
        raise CheckpointError(f"{path}/config.json: pooling {wanted}; llama.cpp pools by one of mean, cls or lasttoken")
    if config.get("include_prompt") is False:
        raise CheckpointError(f"{path}/config.json: include_prompt false (pooling without the prompt's tokens) "
                              "is not supported by llama.cpp")  # fmt: skip
    return modes[0]


def _dense(folder: Path, path: str) -> Dense:
    where = _module_folder(folder, path)
    config = _json(where / "config.json", f"no {path}/config.json (the Dense module's)")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}/config.json is not a JSON object")
    activation = str(config.get("activation_function") or "torch.nn.modules.linear.Identity")
    if not activation.endswith("Identity"):
        raise CheckpointError(f"{path}: a Dense activation ({activation}) is not supported by llama.cpp")
    if config.get("bias", True):
        raise CheckpointError(f"{path}: a Dense projection with a bias is not supported by llama.cpp")
    if not (where / "model.safetensors").exists():
        raise CheckpointError(f"{path}: no model.safetensors (PyTorch pickles are not imported)")
    weights = read_index(where / "model.safetensors")
    weight = weights.get("linear.weight")
    shape = (int(config.get("out_features", 0)), int(config.get("in_features", 0)))
    if weight is None or weight.shape != shape:
        raise CheckpointError(f"{path}: linear.weight must be {list(shape)} (out_features × in_features)")
    return Dense(path, shape[1], shape[0], weight)


def _json(path: Path, missing: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(missing) from None
    except ValueError:
        raise CheckpointError(f"{path.name} is not valid JSON") from None


# -- WordPiece --------------------------------------------------------------------------------------------


@dataclass
class WordPieceVocab(Vocab):
    """A BERT vocabulary as llama.cpp's ``bert`` tokenizer reads it."""

    lowercase: bool = True
    strip_accents: bool = True
    token_type_count: int = 2
    extra_special: dict[str, int] = field(default_factory=dict)  # sep, mask → id (CLS is the BOS)


def load_wordpiece(folder: Path, size: int, token_type_count: int) -> WordPieceVocab:
    """``tokenizer.json`` (a WordPiece model) or ``vocab.txt``, its normalizer's settings, and the
    special tokens of ``tokenizer_config.json`` ([CLS] … [SEP] around every input)."""
    tok_config = _json(folder / "tokenizer_config.json", "") if (folder / "tokenizer_config.json").exists() else {}
    tok_config = tok_config if isinstance(tok_config, dict) else {}
    specials: set[str] = set()
    if (folder / "tokenizer.json").exists():
        doc = _json(folder / "tokenizer.json", "")
        model = doc.get("model") or {}
        if model.get("type") != "WordPiece":
            raise CheckpointError(f"tokenizer.json: a {model.get('type')} tokenizer; BERT models need WordPiece")
        if model.get("continuing_subword_prefix", "##") != "##":
            raise CheckpointError("tokenizer.json: WordPiece continuations must start with '##' for llama.cpp")
        by_id = {int(i): str(t) for t, i in model["vocab"].items()}
        for item in doc.get("added_tokens") or []:
            by_id[int(item["id"])] = str(item["content"])
            if item.get("special"):
                specials.add(str(item["content"]))
        lowercase, strip_accents = _bert_normalizer(doc.get("normalizer"))
    elif (folder / "vocab.txt").exists():
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
        by_id = dict(enumerate(line.rstrip("\r") for line in (lines[:-1] if lines[-1] == "" else lines)))
        lowercase = bool(tok_config.get("do_lower_case", True))
        accents = tok_config.get("strip_accents")
        strip_accents = lowercase if accents is None else bool(accents)
    else:
        raise CheckpointError("no tokenizer: a BERT model needs tokenizer.json (WordPiece) or vocab.txt")
    names = {role: _token_text(tok_config.get(f"{role}_token"), default)
             for role, default in (("unk", "[UNK]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("cls", "[CLS]"),
                                   ("mask", "[MASK]"))}  # fmt: skip
    specials |= set(names.values())
    count = max(by_id) + 1 if by_id else 0
    if count > size:
        raise CheckpointError(f"the tokenizer has {count} tokens, the model {size} embeddings")
    tokens, types = [], []
    for i in range(size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif text in specials:
            tokens.append(text)
            types.append(CONTROL)
        else:  # llama.cpp's WordPiece matches "▁" + word: word-initial pieces carry the prefix
            tokens.append(text[2:] if text.startswith("##") else "▁" + text)
            types.append(NORMAL)
    index = {by_id[i]: i for i in sorted(by_id, reverse=True)}
    missing = [name for role, name in names.items() if role in ("unk", "sep", "cls") and name not in index]
    if missing:
        raise CheckpointError(f"the tokenizer has no {', '.join(missing)} token")
    vocab = WordPieceVocab("bert", tokens, types, pre="default", lowercase=lowercase, strip_accents=strip_accents,
                           token_type_count=token_type_count)  # fmt: skip
    # The CLS token opens every input and SEP closes it (llama.cpp adds both for WordPiece).
    vocab.special = {"bos": index[names["cls"]], "eos": index[names["sep"]], "unk": index[names["unk"]]}
    if names["pad"] in index:
        vocab.special["pad"] = index[names["pad"]]
    vocab.extra_special = {"sep": index[names["sep"]]}
    if names["mask"] in index:
        vocab.extra_special["mask"] = index[names["mask"]]
    vocab.add_bos, vocab.add_eos = True, True
    return vocab


def _token_text(value: Any, default: str) -> str:
    text = value.get("content") if isinstance(value, dict) else value
    return text if isinstance(text, str) else default


def _bert_normalizer(normalizer: Any) -> tuple[bool, bool]:
    """(lowercase, strip accents) of a tokenizer.json normalizer: a BertNormalizer (accents
    stripped when lowercasing unless it says otherwise), or a sequence of Lowercase/StripAccents/NFD."""
    if not normalizer:
        return False, False
    if normalizer.get("type") == "BertNormalizer":
        lowercase = bool(normalizer.get("lowercase", True))
        accents = normalizer.get("strip_accents")
        return lowercase, lowercase if accents is None else bool(accents)
    steps = normalizer.get("normalizers") if normalizer.get("type") == "Sequence" else [normalizer]
    kinds = {str(step.get("type")) for step in steps or []}
    if not kinds <= {"Lowercase", "StripAccents", "NFD"}:
        raise CheckpointError(f"tokenizer.json: the normalizer {sorted(kinds)} is not one llama.cpp's WordPiece has "
                              "(BertNormalizer, Lowercase, StripAccents)")  # fmt: skip
    return "Lowercase" in kinds, "StripAccents" in kinds


def write_wordpiece(w: Any, vocab: Vocab) -> None:
    assert isinstance(vocab, WordPieceVocab)
    write_vocab(w, vocab)
    w.add_uint32("tokenizer.ggml.token_type_count", vocab.token_type_count)
    # llama.cpp assumes bert-base's ids (CLS 101, SEP 102, MASK 103) for what is not written.
    if "sep" in vocab.extra_special:
        w.add_sep_token_id(vocab.extra_special["sep"])
    if "mask" in vocab.extra_special:
        w.add_mask_token_id(vocab.extra_special["mask"])
    w.add_bool("tokenizer.ggml.normalizer.lowercase", vocab.lowercase)
    w.add_bool("tokenizer.ggml.normalizer.strip_accents", vocab.strip_accents)


# -- families ---------------------------------------------------------------------------------------------


class Encoder(Family):
    """An encoder read through sentence-transformers' modules: bidirectional attention, the
    pooling type in the metadata."""

    MAX_DENSE = 0
    modules: Modules

    def prepare(self, folder: Path) -> None:
        self.modules = read_modules(folder, self.arch, self.MAX_DENSE)

    def pooling_hparams(self, w: Any) -> None:
        w.add_causal_attention(False)
        w.add_uint32(f"{self.arch}.pooling_type", POOLING[self.modules.pooling])


class Bert(Encoder):
    """``BertModel`` (also a ``BertForMaskedLM`` checkpoint's encoder): learned positions,
    post-norm layers, GELU, WordPiece."""

    arch = "bert"
    EMBEDDING = "embeddings.word_embeddings.weight"
    TOP: ClassVar[dict[str, str]] = {
        "embeddings.word_embeddings": "token_embd",
        "embeddings.position_embeddings": "position_embd",
        "embeddings.token_type_embeddings": "token_types",
        "embeddings.LayerNorm": "token_embd_norm",
    }
    LAYER: ClassVar[dict[str, str]] = {
        "attention.self.query": "attn_q",
        "attention.self.key": "attn_k",
        "attention.self.value": "attn_v",
        "attention.output.dense": "attn_output",
        "attention.output.LayerNorm": "attn_output_norm",
        "intermediate.dense": "ffn_up",
        "output.dense": "ffn_down",
        "output.LayerNorm": "layer_output_norm",
    }
    LAYERS = "encoder.layer"
    # Heads sentence-transformers does not use (the pooler, masked-LM and next-sentence heads).
    DROPPED = ("embeddings.position_ids", "pooler.", "cls.")
    ACTIVATIONS: ClassVar[tuple[str, ...]] = ("gelu", "gelu_new", "gelu_pytorch_tanh")

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        act = config.get("hidden_act", "gelu")
        if act not in self.ACTIVATIONS:
            raise CheckpointError(f"hidden_act {act!r}: llama.cpp runs BERT with GELU")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError("only absolute position embeddings are supported for BERT by llama.cpp")

    def hparams(self, w: Any) -> None:
        c = self.c
        w.add_context_length(int(c.get("max_position_embeddings", 512)))
        w.add_embedding_length(self.n_embd)
        w.add_block_count(int(c["num_hidden_layers"]))
        w.add_feed_forward_length(int(c["intermediate_size"]))
        w.add_head_count(self.n_head)
        w.add_layer_norm_eps(float(c.get("layer_norm_eps", 1e-12)))
        self.pooling_hparams(w)

    def vocab(self, folder: Path, size: int) -> Vocab:
        return load_wordpiece(folder, size, int(self.c.get("type_vocab_size", 2)))

    def write_vocab(self, w: Any, vocab: Vocab) -> None:
        write_wordpiece(w, vocab)

    def select(self, refs: dict[str, TensorRef]) -> dict[str, TensorRef]:
        out = {}
        for name, ref in refs.items():
            name = name.removeprefix("bert.")
            if name.endswith(".gamma"):  # the oldest BERT checkpoints' LayerNorm names
                name = name[: -len(".gamma")] + ".weight"
            elif name.endswith(".beta"):
                name = name[: -len(".beta")] + ".bias"
            if not name.startswith(self.DROPPED):
                out[name] = ref
        return out

    def _name(self, name: str) -> tuple[str, str]:
        module, _, kind = name.rpartition(".")
        if kind in ("weight", "bias"):
            if module in self.TOP:
                return f"{self.TOP[module]}.{kind}", module
            pieces = module.split(".")
            prefix = self.LAYERS.split(".")
            if pieces[: len(prefix)] == prefix and len(pieces) > len(prefix) and pieces[len(prefix)].isdigit():
                part = ".".join(pieces[len(prefix) + 1 :])
                if part in self.LAYER:
                    return f"blk.{pieces[len(prefix)]}.{self.LAYER[part]}.{kind}", part
        raise CheckpointError(f"unexpected tensor {name} for a {type(self).__name__} checkpoint")


class NomicBert(Bert):
    """``NomicBertModel`` (nomic-embed-text v1/v1.5): BERT's post-norm layers with rotary
    positions (NeoX layout, as llama.cpp rotates), a fused bias-free qkv and a SwiGLU feed-forward
    (``fc11`` the up projection, ``fc12`` the gate). The mixture-of-experts v2 is not supported."""

    arch = "nomic-bert"
    TOP: ClassVar[dict[str, str]] = {
        "embeddings.word_embeddings": "token_embd",
        "embeddings.token_type_embeddings": "token_types",
        "emb_ln": "token_embd_norm",
    }
    LAYER: ClassVar[dict[str, str]] = {
        "attn.Wqkv": "attn_qkv",
        "attn.out_proj": "attn_output",
        "norm1": "attn_output_norm",
        "mlp.fc11": "ffn_up",
        "mlp.fc12": "ffn_gate",
        "mlp.fc2": "ffn_down",
        "norm2": "layer_output_norm",
    }
    LAYERS = "encoder.layers"
    # What llama.cpp's nomic-bert computes; other settings are refused.
    REQUIRED: ClassVar[dict[str, Any]] = {
        "activation_function": "swiglu", "causal": False, "prenorm": False, "qkv_proj_bias": False,
        "mlp_fc1_bias": False, "mlp_fc2_bias": False, "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
    }  # fmt: skip

    def __init__(self, config: dict[str, Any]) -> None:
        if config.get("moe_every_n_layers"):
            raise CheckpointError("nomic-bert with experts (nomic-embed-text-v2-moe) is not supported")
        if "n_embd" in config:  # the Hub's form (nomic's own code): GPT-2's names
            for key, value in self.REQUIRED.items():
                if config.get(key, value) != value:
                    raise CheckpointError(f"{key} {config.get(key)!r}: llama.cpp's nomic-bert needs {value!r}")
            positions = int(config.get("n_positions", 2048))
            # Its position count is the rotary's reach; the models were trained on max_trained_positions.
            context = min(positions, int(config.get("max_trained_positions") or positions))
            config = {
                **config, "num_attention_heads": config["n_head"], "hidden_size": config["n_embd"],
                "num_hidden_layers": config["n_layer"], "intermediate_size": config["n_inner"],
                "max_position_embeddings": context, "layer_norm_eps": config.get("layer_norm_epsilon", 1e-12),
                "rope_theta": config.get("rotary_emb_base", 1000.0),
            }  # fmt: skip
        elif config.get("hidden_act", "silu") != "silu":  # transformers' own NomicBertConfig
            raise CheckpointError(f"hidden_act {config['hidden_act']!r}: llama.cpp's nomic-bert gates with SiLU")
        Family.__init__(self, {"rope_theta": 1000.0, **config})
        if self.rope_scaling:
            raise CheckpointError(f"rope scaling {self.rope_scaling} is not supported for nomic-bert by llama.cpp")

    def hparams(self, w: Any) -> None:
        super().hparams(w)
        w.add_rope_freq_base(self.rope_theta)


class GemmaEmbedding(Encoder, Gemma3):
    """EmbeddingGemma (``Gemma3TextModel``, bidirectional attention, symmetric sliding windows):
    Gemma 3's layers and tensors (without the ``model.`` prefix a bare text model saves), mean
    pooling, and the two ``Dense`` projections as ``dense_2`` and ``dense_3``."""

    arch = "gemma-embedding"
    MAX_DENSE = 2

    def __init__(self, config: dict[str, Any]) -> None:
        if not config.get("use_bidirectional_attention"):
            raise CheckpointError("a Gemma3TextModel without use_bidirectional_attention is not an embedding model "
                                  "(EmbeddingGemma); a Gemma 3 decoder is Gemma3ForCausalLM")  # fmt: skip
        Gemma3.__init__(self, config)

    def prepare(self, folder: Path) -> None:
        super().prepare(folder)
        dense = self.modules.dense
        if dense and (dense[0].in_features != self.n_embd or dense[-1].out_features != self.n_embd):
            raise CheckpointError("llama.cpp needs the Dense projections to start and end at the hidden size "
                                  f"({self.n_embd})")  # fmt: skip
        if len(dense) == 1:
            raise CheckpointError("one Dense projection: llama.cpp's gemma-embedding takes two (2_Dense, 3_Dense)")

    def hparams(self, w: Any) -> None:
        Gemma3.hparams(self, w)
        self.pooling_hparams(w)
        for name, dense in zip(("dense_2", "dense_3"), self.modules.dense, strict=False):
            w.add_uint32(f"{self.arch}.{name}_feat_in", dense.in_features)
            w.add_uint32(f"{self.arch}.{name}_feat_out", dense.out_features)

    def select(self, refs: dict[str, TensorRef]) -> dict[str, TensorRef]:
        return {name if name.startswith("model.") else "model." + name: ref for name, ref in refs.items()}

    def extra_tensors(self) -> Iterator[Tensor]:
        for name, dense in zip(("dense_2", "dense_3"), self.modules.dense, strict=False):
            yield Tensor(f"{name}.weight", dense.weight.shape, _loader(dense.weight, None), dense.weight.dtype)


ENCODERS: dict[str, type[Family]] = {
    "BertModel": Bert,
    "BertForMaskedLM": Bert,
    "NomicBertModel": NomicBert,
    "Gemma3TextModel": GemmaEmbedding,
}


def model_family(config: dict[str, Any]) -> Family:
    """The family of a checkpoint's config: an encoder above, or a decoder (``models.FAMILIES``)."""
    names = config.get("architectures") or []
    for name in names:
        if name in ENCODERS:
            return ENCODERS[name](config)
    if any(name in FAMILIES for name in names):
        return family_for(config)
    supported = ", ".join([*FAMILIES, *ENCODERS])
    raise CheckpointError(f"unsupported architecture {names or '(none named)'}: supported are {supported}")
