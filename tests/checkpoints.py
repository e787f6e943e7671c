"""Tiny Hugging Face checkpoints with random weights, built with transformers (a test-only
dependency), for checking the safetensors → GGUF conversion against transformers' own logits."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

# Characters, then the merges that build "▁hello" and "▁world" (SentencePiece BPE merges the
# adjacent pair whose union scores highest; earlier pieces score higher).
SPM_PIECES = ["▁", "h", "e", "l", "o", "w", "r", "d", "t", "s", ".",
              "▁h", "▁he", "▁hel", "▁hell", "▁hello", "▁w", "▁wo", "▁wor", "▁worl", "▁world"]  # fmt: skip
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
CORPUS = [
    "Hello world, this is a test of a tiny tokenizer.",
    "The quick brown fox jumps over the lazy dog 1234567.",
    "Models are pushed, pulled and served; bytes are verified!",
] * 20


def sentencepiece_model(extra_pieces: int = 0) -> bytes:
    """A SentencePiece ModelProto (the bytes of a tokenizer.model): <unk> <s> </s>, the 256 byte
    pieces and a few words, scored as SentencePiece BPE scores them."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte = n & 0x7F
            n >>= 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field(number: int, wire: int, payload: bytes) -> bytes:
        return varint(number << 3 | wire) + payload

    def piece(text: str, score: float, kind: int) -> bytes:
        body = field(1, 2, varint(len(text.encode())) + text.encode())
        body += field(2, 5, struct.pack("<f", score)) + field(3, 0, varint(kind))
        return field(1, 2, varint(len(body)) + body)

    pieces = [piece("<unk>", 0.0, 2), piece("<s>", 0.0, 3), piece("</s>", 0.0, 3)]
    pieces += [piece(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    words = SPM_PIECES + [f"▁w{i}" for i in range(extra_pieces)]
    pieces += [piece(w, -float(i + 1), 1) for i, w in enumerate(words)]
    normalizer = field(3, 0, varint(1))  # add_dummy_prefix
    return b"".join(pieces) + field(3, 2, varint(len(normalizer)) + normalizer)


SPM_SIZE = 3 + 256 + len(SPM_PIECES)


def write_bpe_tokenizer(folder: Path, pre: str = "llama-bpe") -> int:
    """A byte-level BPE tokenizer.json, BOS added by the post processor; returns its vocabulary
    size. ``pre``, the pre-tokenizer (llama.cpp's name for it): Llama 3's regular expression
    (``llama-bpe``), GPT-2's (``gpt-2``: a plain ByteLevel step), or a whitespace split that
    llama.cpp has no name for (``default``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from client.convert.tokenizer import LLAMA3_PATTERN

    tok = Tokenizer(models.BPE())
    if pre == "llama-bpe":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre == "gpt-2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif pre == "default":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    else:
        raise ValueError(pre)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|end_of_text|>",
                "chat_template": CHAT_TEMPLATE,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    return int(tok.get_vocab_size())


def write_spm_tokenizer(folder: Path) -> int:
    (folder / "tokenizer.model").write_bytes(sentencepiece_model())
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "chat_template": CHAT_TEMPLATE})
    )
    return SPM_SIZE


COMMON = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
    "initializer_range": 0.2,
    "rms_norm_eps": 1e-5,
}


def build(kind: str, folder: Path, *, dtype: str = "float32", seed: int = 0, pre: str = "llama-bpe") -> Any:
    """Write a tiny checkpoint of ``kind`` into ``folder``; returns the transformers model (eval).
    ``pre``: the pre-tokenizer of a byte-level BPE tokenizer (the Llama 3 kinds)."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    bpe = kind in ("llama3", "llama3.2")
    vocab = write_bpe_tokenizer(folder, pre) if bpe else write_spm_tokenizer(folder)
    if kind == "phi3":  # Phi-3's chat tokens follow the SentencePiece vocabulary, as added tokens
        names = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
        added = [{"id": vocab + i, "content": t, "special": True} for i, t in enumerate(names)]
        (folder / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))
        vocab += len(names)
    vocab_size = vocab + 3  # rows the tokenizer does not use, as real checkpoints have
    if kind in ("llama2", "llama3", "llama3.2", "mistral"):
        extra: dict[str, Any] = {"num_key_value_heads": 2 if kind != "llama2" else 4, "rope_theta": 10000.0}
        if kind == "llama3":
            extra["rope_scaling"] = {
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }  # fmt: skip
            extra["rope_theta"] = 500000.0
        if kind == "llama3.2":
            extra["tie_word_embeddings"] = True
        if kind == "mistral":
            config: Any = transformers.MistralConfig(vocab_size=vocab_size, **COMMON, **extra, sliding_window=None)
            model = transformers.MistralForCausalLM(config)
        else:
            config = transformers.LlamaConfig(vocab_size=vocab_size, **COMMON, **extra)
            model = transformers.LlamaForCausalLM(config)
    elif kind == "gemma":
        config = transformers.GemmaConfig(vocab_size=vocab_size, **COMMON, num_key_value_heads=1, head_dim=16)
        model = transformers.GemmaForCausalLM(config)
    elif kind == "gemma2":
        config = transformers.Gemma2Config(
            vocab_size=vocab_size, **COMMON, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
            sliding_window=128, attn_implementation="eager",
        )  # fmt: skip
        model = transformers.Gemma2ForCausalLM(config)
    elif kind == "phi3":
        config = transformers.Phi3Config(vocab_size=vocab_size, **COMMON, num_key_value_heads=4, pad_token_id=0)
        model = transformers.Phi3ForCausalLM(config)
    else:
        raise ValueError(kind)
    # Norm weights are ones (or zeros) at init: perturb them so that converting them is checked.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model = model.to(getattr(torch, dtype)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model.float()(torch.tensor([ids])).logits[0]
    return np.asarray(out.numpy(), dtype=np.float32)


def llama_cpp_logits(gguf: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    from llama_cpp import Llama

    kwargs: dict[str, Any] = {"lora_path": str(lora)} if lora else {}
    llm = Llama(str(gguf), n_ctx=64, logits_all=True, verbose=False, n_threads=2, **kwargs)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
