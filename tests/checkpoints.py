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
# Text in several scripts, for tokenizers trained on it and compared on it (and on text they have
# not seen: unseen characters fall back to bytes).
MULTILINGUAL = [
    "Hello world, this is a test of a tiny tokenizer.",
    "Grüße aus Zürich: Äpfel, Öl und Übermut kosten 12,50 €.",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Привет, мир! Как дела у модели сегодня?",
    "你好，世界！模型已经推送到注册表。",
    "こんにちは世界、トークナイザーのテストです。",
    "مرحبا بالعالم، هذا اختبار.",
    "def f(x):\n    return x ** 2  # 12345678\n\n",
    "Emoji 🚀🔥 and   spaced\ttabs\n\nlines it's we'll",
]
UNSEEN = ["Ελληνικά κείμενα και हिन्दी पाठ 🦙", "한국어 문장도 있습니다 98765", "  leading and trailing  "]

# Chat templates written after the families' own (system prompt handling, turn markers, the
# generation prompt), for checking that the runtime renders them as transformers does.
QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if message.role == 'user' and ns.last_query_index == messages|length - 1 %}"
    "{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content %}{%- set reasoning_content = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and reasoning_content %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
MIXTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate') }}"
    "{%- endif %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- ' [INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- endif %}{%- endfor %}"
)


def write_qwen_tokenizer(folder: Path, template: str, think: bool = False) -> int:
    """Qwen2's tokenizer: byte-level BPE split by Qwen2's expression (digits one by one), NFC,
    no BOS; ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` special, and for Qwen3 the
    non-special ``<think>``/``</think>``. Returns the vocabulary size."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from client.convert.tokenizer import QWEN2_PATTERN

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS + MULTILINGUAL * 10, trainer)
    if think:
        tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                        AddedToken("</think>", special=False, normalized=False)])  # fmt: skip
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "chat_template": template,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    return int(tok.get_vocab_size())


def write_spm_json_tokenizer(
    folder: Path, specials: list[str], bos: str, eos: str, template: str, *, prepend: bool, added: list[str]
) -> int:
    """A SentencePiece BPE in tokenizer.json form (byte fallback; ``specials`` first, the 256
    byte pieces, then pieces trained on the corpus), as Mixtral (``prepend``: "▁" before the
    text) and Gemma 3 (no prefix; ``added`` chat tokens after the vocabulary) ship it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    # Train with words split at spaces, as SentencePiece does, so that pieces start with "▁" at most.
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Replace(" ", "▁")
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=500, show_progress=False, limit_alphabet=120)
    trained.train_from_iterator(CORPUS + MULTILINGUAL * 10, trainer)
    state = json.loads(trained.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(state["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    steps = [normalizers.Prepend("▁")] if prepend else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": bos,
                "eos_token": eos,
                "unk_token": "<unk>",
                "add_bos_token": True,
                "chat_template": template,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    return int(tok.get_vocab_size())


def sentencepiece_model(extra_pieces: int = 0) -> bytes:
    """A SentencePiece ModelProto (the bytes of a tokenizer.model): <unk> <s> </s>, the 256 byte
    pieces and a few words, scored as SentencePiece BPE scores them."""
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    words = SPM_PIECES + [f"▁w{i}" for i in range(extra_pieces)]
    pieces += [(w, -float(i + 1), 1) for i, w in enumerate(words)]
    return sentencepiece_proto(pieces, add_dummy_prefix=True)


def sentencepiece_proto(pieces: list[tuple[str, float, int]], add_dummy_prefix: bool) -> bytes:
    """The ModelProto bytes of (piece, score, type) and the normalizer's add_dummy_prefix."""

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

    normalizer = field(3, 0, varint(int(add_dummy_prefix)))
    return b"".join(piece(*p) for p in pieces) + field(3, 2, varint(len(normalizer)) + normalizer)


def tokenizer_model_from_json(folder: Path, add_dummy_prefix: bool) -> None:
    """The tokenizer.model of a SentencePiece BPE written by ``write_spm_json_tokenizer``, as the
    Hub's Gemma 3 folders have both: the same pieces, a merged piece scoring minus its merge's
    rank (what SentencePiece's BPE picks by), specials as control and bytes as byte pieces."""
    doc = json.loads((folder / "tokenizer.json").read_text())
    model = doc["model"]
    made = {
        "".join(m if isinstance(m, list) else m.split(" ")): i for i, m in reversed(list(enumerate(model["merges"])))
    }
    specials = {t["content"] for t in doc["added_tokens"]}
    pieces = []
    for token, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        if token == "<unk>":
            pieces.append((token, 0.0, 2))
        elif token in specials:
            pieces.append((token, 0.0, 3))
        elif token.startswith("<0x") and len(token) == 6:
            pieces.append((token, 0.0, 6))
        else:
            pieces.append((token, -float(made[token]) if token in made else 0.0, 1))
    (folder / "tokenizer.model").write_bytes(sentencepiece_proto(pieces, add_dummy_prefix))


SPM_SIZE = 3 + 256 + len(SPM_PIECES)


def write_bpe_tokenizer(folder: Path, pre: str = "llama-bpe") -> int:
    """A byte-level BPE tokenizer.json, BOS added by the post processor; returns its vocabulary
    size. ``pre``, the pre-tokenizer (llama.cpp's name for it): Llama 3's regular expression
    (``llama-bpe``), Qwen2's (``qwen2``), GPT-2's (``gpt-2``: a plain ByteLevel step), or a whitespace split that
    llama.cpp has no name for (``default``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from client.convert.tokenizer import LLAMA3_PATTERN, QWEN2_PATTERN

    tok = Tokenizer(models.BPE())
    if pre in ("llama-bpe", "qwen2"):
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(
                    Regex(LLAMA3_PATTERN if pre == "llama-bpe" else QWEN2_PATTERN), behavior="isolated"
                ),
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
    if kind in ("qwen2", "qwen3", "qwen3moe"):
        vocab = write_qwen_tokenizer(folder, QWEN2_TEMPLATE if kind == "qwen2" else QWEN3_TEMPLATE, kind != "qwen2")
    elif kind in ("gemma3", "gemma3-vision"):
        specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
        vocab = write_spm_json_tokenizer(folder, specials, "<bos>", "<eos>", GEMMA3_TEMPLATE, prepend=False,
                                         added=["<start_of_turn>", "<end_of_turn>"])  # fmt: skip
    elif kind == "mixtral":
        vocab = write_spm_json_tokenizer(folder, ["<unk>", "<s>", "</s>"], "<s>", "</s>", MIXTRAL_TEMPLATE,
                                         prepend=True, added=[])  # fmt: skip
    else:
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
    elif kind == "qwen2":
        config = transformers.Qwen2Config(vocab_size=vocab_size, **COMMON, num_key_value_heads=2,
                                          rope_theta=1000000.0, tie_word_embeddings=False)  # fmt: skip
        model = transformers.Qwen2ForCausalLM(config)
    elif kind == "qwen3":  # head_dim other than hidden / heads, as in the real ones
        config = transformers.Qwen3Config(vocab_size=vocab_size, **COMMON, num_key_value_heads=2, head_dim=32,
                                          tie_word_embeddings=True)  # fmt: skip
        model = transformers.Qwen3ForCausalLM(config)
    elif kind == "qwen3moe":
        config = transformers.Qwen3MoeConfig(vocab_size=vocab_size, **COMMON, num_key_value_heads=2, head_dim=32,
                                             num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                             norm_topk_prob=True)  # fmt: skip
        model = transformers.Qwen3MoeForCausalLM(config)
    elif kind in ("gemma3", "gemma3-vision"):
        # Six layers: five local (a window of 4 tokens, shorter than the prompts) and one global
        # with its own rope base and linear scaling, as Gemma 3 4B+ has.
        text = dict(
            vocab_size=vocab_size, **{**COMMON, "num_hidden_layers": 6}, num_key_value_heads=2, head_dim=16,
            query_pre_attn_scalar=16, sliding_window=4,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        )  # fmt: skip
        if kind == "gemma3":
            config = transformers.Gemma3TextConfig(**text, attn_implementation="eager")
            model = transformers.Gemma3ForCausalLM(config)
        else:  # the multimodal checkpoint (4B and up), with a tiny SigLIP vision tower
            vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          image_size=32, patch_size=8)  # fmt: skip
            config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                               image_token_index=vocab_size - 1, boi_token_index=vocab_size - 3,
                                               eoi_token_index=vocab_size - 2, attn_implementation="eager")  # fmt: skip
            model = transformers.Gemma3ForConditionalGeneration(config)
    elif kind == "mixtral":
        config = transformers.MixtralConfig(vocab_size=vocab_size, **COMMON, num_key_value_heads=2,
                                            num_local_experts=4, num_experts_per_tok=2)  # fmt: skip
        model = transformers.MixtralForCausalLM(config)
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
