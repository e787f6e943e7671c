"""Safetensors checkpoints → GGUF, checked for real: tiny random Llama (2, 3.1 with its rope
scaling, 3.2 with tied embeddings), Mistral, Gemma, Gemma 2, Phi-3, Qwen2, Qwen3, Qwen3 MoE,
Gemma 3 (local and global layers) and Mixtral (experts) checkpoints made with transformers are
converted, and the logits llama.cpp computes from the GGUF are compared with the logits
transformers computes from the checkpoint, for the same token ids. For the families with their
own tokenizer and chat template (Qwen2/3, Qwen3 MoE, Gemma 3, Mixtral), llama.cpp's token ids are
compared with the checkpoint's tokenizer's on text in several scripts, and the runtime's
rendering of the converted chat template with transformers' ``apply_chat_template``.

Tolerance: every logit within 0.5% of the largest logit's magnitude (F32 weights; llama.cpp keeps
its KV cache in F16, which is most of the difference), 2% for F16/BF16 checkpoints, 10% after
quantizing to Q8_0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client.convert import CheckpointError, convert_adapter, convert_model
from client.convert.tokenizer import PRE_TOKENIZERS
from client.model_info import read_gguf_metadata
from tests.checkpoints import MULTILINGUAL, UNSEEN, build, hf_logits, llama_cpp_logits
from tests.servers import REPO_ROOT

IDS = [1, 5, 9, 42, 100, 7, 3, 200, 17, 64, 250, 11]


def close(ours: np.ndarray, theirs: np.ndarray, relative: float) -> tuple[bool, float]:
    worst = float(np.abs(ours - theirs).max())
    return worst <= relative * float(np.abs(theirs).max()), worst


@pytest.mark.parametrize(
    ("kind", "arch"),
    [
        ("llama2", "llama"),
        ("llama3", "llama"),
        ("llama3.2", "llama"),
        ("mistral", "llama"),
        ("gemma", "gemma"),
        ("gemma2", "gemma2"),
        ("phi3", "phi3"),
        ("qwen2", "qwen2"),
        ("qwen3", "qwen3"),
        ("qwen3moe", "qwen3moe"),
        ("gemma3", "gemma3"),
        ("gemma3-vision", "gemma3"),
        ("mixtral", "llama"),
    ],
)
def test_logits_match_transformers(kind: str, arch: str, tmp_path: Path) -> None:
    model = build(kind, tmp_path / kind)
    out = tmp_path / f"{kind}.gguf"
    assert convert_model(tmp_path / kind, out) == arch
    ok, worst = close(llama_cpp_logits(out, IDS), hf_logits(model, IDS), 0.005)
    assert ok, f"{kind}: largest logit difference {worst}"
    meta = read_gguf_metadata(out, max_array=0)[0]
    assert meta["general.architecture"] == arch
    template = json.loads((tmp_path / kind / "tokenizer_config.json").read_text())["chat_template"]
    assert meta["tokenizer.chat_template"] == template
    assert meta["general.file_type"] == 0  # F32, as the checkpoint


def test_qwen2_yarn_rope_scaling(tmp_path: Path) -> None:
    """Qwen2.5's long-context setting (YaRN, factor 4 over the original context) as llama.cpp's
    rope scaling keys: the logits still match transformers' (without the scaling they differ by
    about 19% of the largest)."""
    import transformers

    build("qwen2", tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                 "rope_theta": 1000000.0}  # fmt: skip
    (tmp_path / "q" / "config.json").write_text(json.dumps(config))
    model = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "q").eval()
    convert_model(tmp_path / "q", tmp_path / "q.gguf")
    meta = read_gguf_metadata(tmp_path / "q.gguf", max_array=0)[0]
    assert (meta["qwen2.rope.scaling.type"], meta["qwen2.rope.scaling.factor"]) == ("yarn", 4.0)
    assert meta["qwen2.rope.scaling.original_context_length"] == 64
    ok, worst = close(llama_cpp_logits(tmp_path / "q.gguf", IDS), hf_logits(model, IDS), 0.005)
    assert ok, f"largest logit difference {worst}"


def test_gemma3_hub_config_takes_transformers_defaults(tmp_path: Path) -> None:
    """gemma-3-4b-it's config.json names only what differs from Gemma3TextConfig's defaults; the
    keys written agree with the config transformers makes of it."""
    import gguf
    import transformers

    from client.convert.models import family_for

    hub = {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "mm_tokens_per_image": 256,
        "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                        "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                        "sliding_window": 1024},
        "vision_config": {"model_type": "siglip_vision_model"},
    }  # fmt: skip
    w = gguf.GGUFWriter(str(tmp_path / "h.gguf"), "gemma3")
    family_for(hub).hparams(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    meta = read_gguf_metadata(tmp_path / "h.gguf", max_array=100)[0]
    text = transformers.Gemma3Config(**{k: v for k, v in hub.items() if k != "architectures"}).text_config
    full, local = text.rope_parameters["full_attention"], text.rope_parameters["sliding_attention"]
    assert meta["gemma3.attention.head_count"] == text.num_attention_heads
    assert meta["gemma3.attention.head_count_kv"] == text.num_key_value_heads
    assert meta["gemma3.attention.key_length"] == text.head_dim == text.query_pre_attn_scalar
    assert meta["gemma3.context_length"] == text.max_position_embeddings
    assert meta["gemma3.attention.layer_norm_rms_epsilon"] == pytest.approx(text.rms_norm_eps)
    assert meta["gemma3.attention.sliding_window"] == text.sliding_window
    assert meta["gemma3.attention.sliding_window_pattern"] == [t == "sliding_attention" for t in text.layer_types]
    assert (meta["gemma3.rope.freq_base"], meta["gemma3.rope.freq_base_swa"]) == (
        full["rope_theta"],
        local["rope_theta"],
    )
    assert (meta["gemma3.rope.scaling.type"], meta["gemma3.rope.scaling.factor"]) == ("linear", full["factor"])


def test_family_metadata(tmp_path: Path) -> None:
    """What llama.cpp reads besides the tensors: Gemma 3's layer pattern and rope bases (also from
    the Hub's form of its config), Mixtral's and Qwen3 MoE's expert counts and stacked expert
    tensors, Qwen3's head size."""
    build("gemma3", tmp_path / "g")
    convert_model(tmp_path / "g", tmp_path / "g.gguf")
    meta = read_gguf_metadata(tmp_path / "g.gguf", max_array=10)[0]
    assert meta["gemma3.attention.sliding_window"] == 4
    assert meta["gemma3.attention.sliding_window_pattern"] == [True] * 5 + [False]
    assert (meta["gemma3.rope.freq_base"], meta["gemma3.rope.freq_base_swa"]) == (1000000.0, 10000.0)
    assert (meta["gemma3.rope.scaling.type"], meta["gemma3.rope.scaling.factor"]) == ("linear", 8.0)
    # The same settings as the Hub's Gemma 3 configs write them (transformers 4's keys).
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    for key in ("rope_parameters", "layer_types", "_sliding_window_pattern"):
        config.pop(key)
    config.update(rope_theta=1000000.0, rope_local_base_freq=10000.0, sliding_window_pattern=6,
                  rope_scaling={"factor": 8.0, "rope_type": "linear"})  # fmt: skip
    (tmp_path / "g" / "config.json").write_text(json.dumps(config))
    convert_model(tmp_path / "g", tmp_path / "hub.gguf")
    hub = read_gguf_metadata(tmp_path / "hub.gguf", max_array=10)[0]
    assert {k: v for k, v in hub.items() if k.startswith("gemma3.")} == {
        k: v for k, v in meta.items() if k.startswith("gemma3.")
    }
    build("mixtral", tmp_path / "m")
    convert_model(tmp_path / "m", tmp_path / "m.gguf")
    meta, tensors, _ = read_gguf_metadata(tmp_path / "m.gguf", max_array=0)
    assert (meta["llama.expert_count"], meta["llama.expert_used_count"]) == (4, 2)
    shapes = {t["name"]: t["shape"] for t in tensors}
    assert shapes["blk.1.ffn_gate_exps.weight"] == shapes["blk.1.ffn_up_exps.weight"] == [64, 128, 4]
    assert shapes["blk.1.ffn_down_exps.weight"] == [128, 64, 4]
    assert shapes["blk.1.ffn_gate_inp.weight"] == [64, 4]
    assert not any(".experts." in name or "ffn_gate.weight" in name for name in shapes)
    build("qwen3", tmp_path / "q")
    convert_model(tmp_path / "q", tmp_path / "q.gguf")
    meta, tensors, _ = read_gguf_metadata(tmp_path / "q.gguf", max_array=0)
    assert (meta["qwen3.attention.key_length"], meta["qwen3.attention.value_length"]) == (32, 32)
    assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= {t["name"] for t in tensors}
    assert "output.weight" not in {t["name"] for t in tensors}  # tied: llama.cpp uses token_embd
    build("qwen3moe", tmp_path / "qm")
    convert_model(tmp_path / "qm", tmp_path / "qm.gguf")
    meta, tensors, _ = read_gguf_metadata(tmp_path / "qm.gguf", max_array=0)
    assert (meta["qwen3moe.expert_count"], meta["qwen3moe.expert_used_count"]) == (4, 2)
    assert meta["qwen3moe.expert_feed_forward_length"] == 32
    shapes = {t["name"]: t["shape"] for t in tensors}
    assert shapes["blk.0.ffn_up_exps.weight"] == [64, 32, 4] and shapes["blk.0.ffn_down_exps.weight"] == [32, 64, 4]
    assert shapes["blk.0.ffn_gate_inp.weight"] == [64, 4]


CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant. Answer in one line."},
    {"role": "user", "content": "Wie heißt die Hauptstadt der Schweiz?"},
    {"role": "assistant", "content": "Bern."},
    {"role": "user", "content": "And of Japan? 日本の首都は？"},
]


TOKENIZER_KINDS = [("qwen2", "qwen2"), ("qwen3", "qwen2"), ("qwen3moe", "qwen2"), ("gemma3", None), ("mixtral", None)]


@pytest.mark.parametrize(("kind", "pre"), TOKENIZER_KINDS)
def test_tokenizer_and_chat_template_match_transformers(kind: str, pre: str | None, tmp_path: Path) -> None:
    """Token ids equal to the checkpoint's tokenizer's on text in several scripts (and on scripts
    it was not trained on: byte fallback), with BOS added or not as it does; the converted chat
    template rendered by the runtime as transformers renders it, and that prompt tokenized alike
    with its special tokens."""
    import transformers
    from llama_cpp import Llama

    from formats.thinking import Think
    from runtime.prompts import Message, PromptTemplate

    build(kind, tmp_path / kind)
    out = tmp_path / f"{kind}.gguf"
    convert_model(tmp_path / kind, out)
    meta, _, special = read_gguf_metadata(out, max_array=0)
    assert meta.get("tokenizer.ggml.pre") == pre
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / kind)
    llm = Llama(str(out), vocab_only=True, verbose=False)
    try:
        for text in MULTILINGUAL + UNSEEN:
            assert llm.tokenize(text.encode(), add_bos=True) == theirs.encode(text), text
        ours = PromptTemplate(None, meta["tokenizer.chat_template"], special.get("bos", ""), special.get("eos", ""))
        rendered = ours.render([Message(m["role"], m["content"]) for m in CONVERSATION])
        expected = theirs.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
        assert rendered == expected
        ids = llm.tokenize(rendered.encode(), add_bos=not rendered.startswith(special.get("bos") or "\0"), special=True)
        assert ids == theirs.encode(rendered, add_special_tokens=False), rendered
        if kind.startswith("qwen3"):  # think: false reaches the template as Qwen3's enable_thinking
            off = ours.render([Message(m["role"], m["content"]) for m in CONVERSATION], think=Think(False, "", True))
            assert off == theirs.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True,
                                                     enable_thinking=False)  # fmt: skip
            assert off.endswith("<think>\n\n</think>\n\n")
    finally:
        llm.close()


@pytest.mark.parametrize("kind", ["llama2", "qwen2", "qwen3", "qwen3moe", "gemma3", "mixtral"])
def test_q8_0_logits_stay_close(kind: str, tmp_path: Path) -> None:
    """The converted GGUF quantized to Q8_0 by llama.cpp (as `hangar create -q q8_0` does; for
    Mixtral and Qwen3 MoE the stacked expert tensors too) loads and stays within 10% of the largest
    logit. Looser than F32 because these tiny random models (weights ~0.2) amplify rounding: llama.cpp
    also rounds the activations to 8 bits, and the measured worst is 3-7% for every family; a wrong
    layout is caught by the F32 test, not by this one."""
    import llama_cpp

    model = build(kind, tmp_path / kind)
    convert_model(tmp_path / kind, tmp_path / "f32.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_cpp.llama_model_quantize(str(tmp_path / "f32.gguf").encode(), str(tmp_path / "q8.gguf").encode(),
                                          params) == 0  # fmt: skip
    ok, worst = close(llama_cpp_logits(tmp_path / "q8.gguf", IDS), hf_logits(model, IDS), 0.10)
    assert ok, f"{kind}: largest logit difference {worst}"


@pytest.mark.parametrize("kind", ["llama2", "mixtral", "gemma3"])
@pytest.mark.parametrize(("dtype", "file_type"), [("float16", 1), ("bfloat16", 32)])
def test_half_precision_checkpoints_stay_half_precision(kind: str, dtype: str, file_type: int, tmp_path: Path) -> None:
    """Half-precision checkpoints (the Hub's are BF16) stay so, Mixtral's stacked experts included."""
    model = build(kind, tmp_path / "ckpt", dtype=dtype)
    out = tmp_path / "half.gguf"
    convert_model(tmp_path / "ckpt", out)
    meta, tensors, _ = read_gguf_metadata(out, max_array=0)
    assert meta["general.file_type"] == file_type
    kinds = {t["name"]: t["type"] for t in tensors}
    assert kinds["blk.0.attn_q.weight"] == ("F16" if dtype == "float16" else "BF16")
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    if kind == "mixtral":
        assert kinds["blk.0.ffn_down_exps.weight"] == kinds["blk.0.attn_q.weight"]
    ok, worst = close(llama_cpp_logits(out, IDS), hf_logits(model, IDS), 0.02)
    assert ok, f"largest logit difference {worst}"


def test_byte_level_bpe_tokenizes_as_the_checkpoint_does(tmp_path: Path) -> None:
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    build("llama3", tmp_path / "ckpt")
    out = tmp_path / "bpe.gguf"
    convert_model(tmp_path / "ckpt", out)
    meta = read_gguf_metadata(out, max_array=0)[0]
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "llama-bpe")
    theirs = Tokenizer.from_file(str(tmp_path / "ckpt" / "tokenizer.json"))
    llm = Llama(str(out), vocab_only=True, verbose=False)
    try:
        for text in ["Hello world, this is a test.", "The quick brown fox 1234567!", "  spaced\n\nlines  "]:
            assert llm.tokenize(text.encode(), add_bos=True) == theirs.encode(text).ids, text
    finally:
        llm.close()


@pytest.mark.parametrize("pre", PRE_TOKENIZERS)
def test_every_pre_tokenizer_name_written_is_one_llama_cpp_loads(pre: str, tmp_path: Path) -> None:
    """#18 item 11: a plain byte-level BPE tokenizer was written as pre-tokenizer "gpt2", which
    llama.cpp refuses ("unknown pre-tokenizer type"; its name is "gpt-2"). For each name the
    converter writes, a checkpoint with that pre-tokenizer converts, loads in llama.cpp, and (for
    the named ones) tokenizes as the checkpoint's own tokenizer does."""
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    build("llama3", tmp_path / "ckpt", pre=pre)
    out = tmp_path / "bpe.gguf"
    convert_model(tmp_path / "ckpt", out)
    assert read_gguf_metadata(out, max_array=0)[0]["tokenizer.ggml.pre"] == pre
    theirs = Tokenizer.from_file(str(tmp_path / "ckpt" / "tokenizer.json"))
    llm = Llama(str(out), vocab_only=True, verbose=False)  # raises when llama.cpp refuses the vocabulary
    try:
        if pre != "default":  # llama.cpp's default splitting only approximates an unknown one
            for text in ["Hello world, this is a test.", "The quick brown fox 1234567!", "it's  spaced\n\nlines  "]:
                assert llm.tokenize(text.encode(), add_bos=True) == theirs.encode(text).ids, text
    finally:
        llm.close()


def test_sentencepiece_vocabulary_is_carried_over(tmp_path: Path) -> None:
    build("llama2", tmp_path / "ckpt")
    out = tmp_path / "spm.gguf"
    convert_model(tmp_path / "ckpt", out)
    meta = read_gguf_metadata(out, max_array=0)[0]
    assert meta["tokenizer.ggml.model"] == "llama"
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    from llama_cpp import Llama

    llm = Llama(str(out), vocab_only=True, verbose=False)
    try:
        # "▁hello" and "▁world" are pieces of the tiny vocabulary; anything else falls back to bytes.
        tokens = llm.tokenize(b"hello world", add_bos=False)
        assert [llm.detokenize([t]).decode() for t in tokens] == [" hello", " world"]
        assert llm.detokenize(llm.tokenize("zürich".encode(), add_bos=False)).decode().strip() == "zürich"
    finally:
        llm.close()


def test_gemma3_tokenizer_model_tokenizes_as_its_tokenizer_json(tmp_path: Path) -> None:
    """The Hub's Gemma 3 folders hold tokenizer.model (which the converter reads) beside
    tokenizer.json (which transformers reads): from the protobuf, with no space prefix
    (add_dummy_prefix false), llama.cpp tokenizes as transformers does."""
    import transformers
    from llama_cpp import Llama

    from tests.checkpoints import tokenizer_model_from_json

    build("gemma3", tmp_path / "g")
    tokenizer_model_from_json(tmp_path / "g", add_dummy_prefix=False)
    convert_model(tmp_path / "g", tmp_path / "g.gguf")
    meta = read_gguf_metadata(tmp_path / "g.gguf", max_array=0)[0]
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.add_space_prefix"]) == ("llama", False)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "g")
    llm = Llama(str(tmp_path / "g.gguf"), vocab_only=True, verbose=False)
    try:
        for text in MULTILINGUAL + UNSEEN + ["<start_of_turn>user\nhi<end_of_turn>\n"]:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == theirs.encode(text), text
    finally:
        llm.close()


@pytest.mark.parametrize("kind", ["llama2", "qwen2", "qwen3", "qwen3moe", "gemma3", "gemma3-vision", "mixtral"])
def test_lora_adapter_matches_merged_weights(kind: str, tmp_path: Path) -> None:
    """A PEFT-style LoRA adapter on q, k and v: llama.cpp applying the converted adapter computes
    what transformers computes with the adapter merged into the weights."""
    import torch
    from safetensors.torch import save_file

    model = build(kind, tmp_path / "base")
    base_gguf = tmp_path / "base.gguf"
    convert_model(tmp_path / "base", base_gguf)
    rank, alpha = 4, 8.0
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    weights = {}
    torch.manual_seed(1)
    if kind == "gemma3-vision":  # PEFT's names for Gemma 3's multimodal model, as adapters on the Hub have them
        layers, names = model.model.language_model.layers, "base_model.model.language_model.model.layers"
    else:
        layers, names = model.model.layers, "base_model.model.model.layers"
    with torch.no_grad():
        for i, layer in enumerate(layers):
            for proj in ("q_proj", "k_proj", "v_proj"):
                linear = getattr(layer.self_attn, proj)
                a = torch.randn(rank, linear.in_features) * 0.1
                b = torch.randn(linear.out_features, rank) * 0.1
                prefix = f"{names}.{i}.self_attn.{proj}"
                weights[f"{prefix}.lora_A.weight"], weights[f"{prefix}.lora_B.weight"] = a, b
                linear.weight += (alpha / rank) * (b @ a)  # the merged model
    save_file(weights, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": alpha, "peft_type": "LORA"}))
    lora = tmp_path / "lora.gguf"
    convert_adapter(adapter, lora, json.loads((tmp_path / "base" / "config.json").read_text()))
    ok, worst = close(llama_cpp_logits(base_gguf, IDS, lora=lora), hf_logits(model, IDS), 0.005)
    assert ok, f"largest logit difference {worst}"
    unadapted = llama_cpp_logits(base_gguf, IDS)
    assert not close(unadapted, hf_logits(model, IDS), 0.005)[0]  # the adapter did change the model


@pytest.mark.parametrize("kind", ["mixtral", "qwen3moe"])
def test_lora_on_experts_matches_merged_weights(kind: str, tmp_path: Path) -> None:
    """PEFT LoRA on every expert's three projections (and on q): the converted adapter stacks the
    experts' A and B matrices as their weights are, and llama.cpp applying it computes what
    transformers computes with the adapter merged (transformers holds each layer's experts fused:
    ``gate_up_proj[e]`` is gate then up, ``down_proj[e]``)."""
    import torch
    from safetensors.torch import save_file

    model = build(kind, tmp_path / "base")
    convert_model(tmp_path / "base", tmp_path / "base.gguf")
    if kind == "mixtral":
        module, (gate, up, down) = "block_sparse_moe", ("w1", "w3", "w2")
    else:
        module, (gate, up, down) = "mlp", ("gate_proj", "up_proj", "down_proj")
    rank, alpha, weights = 2, 4.0, {}
    torch.manual_seed(2)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            experts = layer.mlp.experts
            inter = experts.down_proj.shape[-1]
            for e in range(experts.gate_up_proj.shape[0]):
                targets = (
                    (gate, experts.gate_up_proj, slice(0, inter)),
                    (up, experts.gate_up_proj, slice(inter, None)),
                    (down, experts.down_proj, slice(None)),
                )
                for proj, param, rows in targets:
                    out_features, in_features = param[e][rows].shape
                    a, b = torch.randn(rank, in_features) * 0.1, torch.randn(out_features, rank) * 0.1
                    prefix = f"base_model.model.model.layers.{i}.{module}.experts.{e}.{proj}"
                    weights[f"{prefix}.lora_A.weight"], weights[f"{prefix}.lora_B.weight"] = a, b
                    param[e][rows] += (alpha / rank) * (b @ a)
            linear = layer.self_attn.q_proj
            a, b = torch.randn(rank, linear.in_features) * 0.1, torch.randn(linear.out_features, rank) * 0.1
            prefix = f"base_model.model.model.layers.{i}.self_attn.q_proj"
            weights[f"{prefix}.lora_A.weight"], weights[f"{prefix}.lora_B.weight"] = a, b
            linear.weight += (alpha / rank) * (b @ a)
    (tmp_path / "adapter").mkdir()
    save_file(weights, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": alpha}))
    lora = tmp_path / "lora.gguf"
    convert_adapter(tmp_path / "adapter", lora, json.loads((tmp_path / "base" / "config.json").read_text()))
    names = {t["name"] for t in read_gguf_metadata(lora, max_array=0)[1]}
    assert {"blk.0.ffn_gate_exps.weight.lora_a", "blk.1.ffn_down_exps.weight.lora_b"} <= names
    ok, worst = close(llama_cpp_logits(tmp_path / "base.gguf", IDS, lora=lora), hf_logits(model, IDS), 0.005)
    assert ok, f"largest logit difference {worst}"
    assert not close(llama_cpp_logits(tmp_path / "base.gguf", IDS), hf_logits(model, IDS), 0.005)[0]


def test_conversion_errors(tmp_path: Path) -> None:
    build("llama2", tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "architectures": ["FalconForCausalLM"]}))
    with pytest.raises(CheckpointError, match=r"unsupported architecture \['FalconForCausalLM'\]"):
        convert_model(tmp_path / "ckpt", tmp_path / "x.gguf")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    (tmp_path / "ckpt" / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer"):
        convert_model(tmp_path / "ckpt", tmp_path / "x.gguf")
    build("llama2", tmp_path / "cut")
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="runs past the end of the file"):
        convert_model(tmp_path / "cut", tmp_path / "x.gguf")


@pytest.mark.parametrize(
    ("kind", "arch"), [("llama3", "llama"), ("qwen3", "qwen3"), ("gemma3", "gemma3"), ("mixtral", "llama")]
)
def test_hangar_create_from_a_checkpoint_folder(kind: str, arch: str, tmp_path: Path) -> None:
    """`FROM ./folder` of safetensors: converted, quantized, and the model answers."""
    build(kind, tmp_path / "ckpt")
    (tmp_path / "Modelfile").write_text("FROM ./ckpt\nPARAMETER temperature 0\nPARAMETER num_predict 4\n")
    env = {**os.environ, "HANGAR_HOME": str(tmp_path / "home"), "HANGAR_HOST": "127.0.0.1:9"}
    env.pop("HANGAR_MODELS", None)

    def hangar(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True,
                           cwd=REPO_ROOT)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    out = hangar("create", "converted", "-f", str(tmp_path / "Modelfile"), "-q", "q8_0").stdout
    assert "converting model" in out and "quantizing F32 model to Q8_0" in out and out.rstrip().endswith("success")
    shown = hangar("show", "converted").stdout
    assert f"architecture        {arch}" in shown and "quantization        Q8_0" in shown
    from llama_cpp import Llama

    from client.config import load
    from client.model_info import inspect
    from client.store import Store
    from formats.names import ModelName

    store = Store(load({"HANGAR_HOME": str(tmp_path / "home")}).models)
    info = inspect(store, store.get(ModelName.parse("converted")))
    template = json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())["chat_template"]
    assert info.gguf["tokenizer.chat_template"] == template  # the checkpoint's template came along
    llm = Llama(str(info.model_path), n_ctx=64, verbose=False)
    try:
        done = llm.create_completion("Hello", max_tokens=4, temperature=0)
        bos = kind != "qwen3"  # Qwen adds no BOS
        assert done["usage"]["completion_tokens"] >= 1 and done["usage"]["prompt_tokens"] >= 1 + bos
        assert llm.n_vocab() == json.loads((tmp_path / "ckpt" / "config.json").read_text())["vocab_size"]
    finally:
        llm.close()


@pytest.mark.parametrize("kind", ["mistral", "qwen3", "gemma3"])
def test_hangar_create_converts_a_safetensors_adapter(kind: str, tmp_path: Path) -> None:
    """ADAPTER ./folder (PEFT safetensors) over a GGUF base: the adapter is converted using the base
    GGUF's shape, and becomes the model's adapter layer."""
    import torch
    from safetensors.torch import save_file

    model = build(kind, tmp_path / "ckpt")
    convert_model(tmp_path / "ckpt", tmp_path / "base.gguf")
    (tmp_path / "ad").mkdir()
    weights = {}
    for i, layer in enumerate(model.model.layers):
        for proj in ("q_proj", "k_proj"):
            linear = getattr(layer.self_attn, proj)
            prefix = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            weights[f"{prefix}.lora_A.weight"] = torch.randn(2, linear.in_features)
            weights[f"{prefix}.lora_B.weight"] = torch.randn(linear.out_features, 2)
    save_file(weights, str(tmp_path / "ad" / "adapter_model.safetensors"))
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    (tmp_path / "Modelfile").write_text("FROM ./base.gguf\nADAPTER ./ad\n")
    env = {**os.environ, "HANGAR_HOME": str(tmp_path / "home"), "HANGAR_HOST": "127.0.0.1:9"}
    env.pop("HANGAR_MODELS", None)
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "create", "adapted", "-f", str(tmp_path / "Modelfile")],
        env=env, capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "converting adapter" in r.stdout
    from client.config import load
    from client.store import Store
    from formats import mediatypes as mt
    from formats.names import ModelName

    store = Store(load({"HANGAR_HOME": str(tmp_path / "home")}).models)
    layers = store.get(ModelName.parse("adapted")).manifest.layers
    assert [d.media_type for d in layers] == [mt.OLLAMA_MODEL, mt.OLLAMA_ADAPTER]
    meta = read_gguf_metadata(store.blob_path(layers[1].digest), max_array=0)[0]
    assert (meta["general.type"], meta["adapter.type"], meta["adapter.lora.alpha"]) == ("adapter", "lora", 2.0)
    # llama.cpp accepts it on the base model, and it changes the logits.
    adapted = llama_cpp_logits(store.blob_path(layers[0].digest), IDS[:4], lora=store.blob_path(layers[1].digest))
    plain = llama_cpp_logits(store.blob_path(layers[0].digest), IDS[:4])
    assert adapted.shape == plain.shape == (4, model.config.vocab_size)
    assert not np.allclose(adapted, plain, atol=1e-3)
