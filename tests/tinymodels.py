"""Tiny GGUF models with random weights, made with the ``gguf`` package: a few hundred KB that
llama.cpp loads and runs in well under a second. Their output is noise, but it is real llama.cpp
output, so every API can be exercised for real.

The tokenizer is SentencePiece-style with byte fallback: ``<unk> <s> </s>``, the 256 byte
tokens ``<0x00>``…``<0xFF>`` and a few common pieces, so any text tokenizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
PIECES = ["▁", "▁the", "▁a", "e", "t", "▁hello", "▁world", "s", "▁I", "."]


def write_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    dim: int = 64,
    layers: int = 2,
    context: int = 512,
    chat_template: str | None = None,
    embedding: bool = False,
    name: str = "tiny",
) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + PIECES
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(PIECES)
    scores = [0.0] * 259 + [-float(i + 1) for i in range(len(PIECES))]
    vocab, heads, ff = len(tokens), 4, dim * 2

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(context)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(dim // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    if chat_template:
        w.add_chat_template(chat_template)
    if embedding:
        w.add_pooling_type(gguf.PoolingType.MEAN)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    tensor("token_embd.weight", vocab, dim)
    for i in range(layers):
        for part, shape in [
            ("attn_q", (dim, dim)),
            ("attn_k", (dim, dim)),
            ("attn_v", (dim, dim)),
            ("attn_output", (dim, dim)),
            ("ffn_gate", (ff, dim)),
            ("ffn_up", (ff, dim)),
            ("ffn_down", (dim, ff)),
        ]:
            tensor(f"blk.{i}.{part}.weight", *shape)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    tensor("output.weight", vocab, dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


CHATML_TOOLS_TEMPLATE = """{{- if or .System .Tools }}<|system|>
{{ .System }}
{{- if .Tools }}
Tools: {{ json .Tools }}
Call a tool as {"name": ..., "arguments": {...}}.
{{- end }}</s>
{{ end }}
{{- range .Messages }}<|{{ .Role }}|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}{{ end }}
{{- else }}
{{ .Content }}
{{- end }}</s>
{{ end }}<|assistant|>
"""


def add_model(
    store: Any,
    name: str,
    gguf_path: Path,
    *,
    template: str | None = None,
    system: str | None = None,
    params: dict[str, Any] | None = None,
    messages: list[dict[str, str]] | None = None,
    license: str | None = None,
    projector: Path | None = None,
    config: dict[str, Any] | None = None,
) -> Any:
    """Put a GGUF into a store as a model with the given layers (as ``hangar create`` would);
    ``config`` adds to its config (``capabilities``, ``parser`` …)."""
    import json

    from formats import mediatypes as mt
    from formats.manifest import Descriptor, Manifest
    from formats.names import ModelName

    store.ensure()
    digest, size = store.add_blob_file(gguf_path)
    layers = [Descriptor(mt.OLLAMA_MODEL, digest, size)]
    if projector is not None:
        d, n = store.add_blob_file(projector)
        layers.append(Descriptor(mt.OLLAMA_PROJECTOR, d, n))
    for media_type, value in (
        (mt.OLLAMA_TEMPLATE, template),
        (mt.OLLAMA_SYSTEM, system),
        (mt.OLLAMA_PARAMS, json.dumps(params) if params is not None else None),
        (mt.OLLAMA_MESSAGES, json.dumps(messages) if messages is not None else None),
        (mt.OLLAMA_LICENSE, license),
    ):
        if value is not None:
            d, n = store.add_blob_bytes(value.encode())
            layers.append(Descriptor(media_type, d, n))
    config = {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "file_type": "F32",
        "architecture": "amd64",
        "os": "linux",
        **(config or {}),
    }
    cd, cn = store.add_blob_bytes(json.dumps(config).encode() + b"\n")
    model_name = ModelName.parse(name)
    store.put_manifest(model_name, Manifest.build(Descriptor(mt.DOCKER_CONFIG, cd, cn), layers).raw)
    return model_name


def write_tiny_projector(path: Path, *, text_dim: int = 64, seed: int = 0) -> Path:
    """A LLaVA-style vision projector (mmproj GGUF: a one-block CLIP encoder and a two-layer MLP
    into the text model's ``text_dim``) with random weights. A 32×32 image becomes 16 embeddings."""
    import gguf

    image, patch, dim, ff, hidden = 32, 8, 32, 64, 64
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_string("general.name", "tiny-projector")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_uint32("clip.vision.image_size", image)
    w.add_uint32("clip.vision.patch_size", patch)
    w.add_uint32("clip.vision.embedding_length", dim)
    w.add_uint32("clip.vision.feed_forward_length", ff)
    w.add_uint32("clip.vision.projection_dim", text_dim)
    w.add_uint32("clip.vision.block_count", 1)
    w.add_uint32("clip.vision.attention.head_count", 2)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    w.add_bool("clip.use_gelu", True)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    def norm(name: str, n: int) -> None:
        w.add_tensor(f"{name}.weight", np.ones(n, dtype=np.float32))
        w.add_tensor(f"{name}.bias", np.zeros(n, dtype=np.float32))

    def linear(name: str, n_out: int, n_in: int) -> None:
        tensor(f"{name}.weight", n_out, n_in)
        w.add_tensor(f"{name}.bias", np.zeros(n_out, dtype=np.float32))

    tensor("v.patch_embd.weight", dim, 3, patch, patch)
    tensor("v.class_embd", dim)
    tensor("v.position_embd.weight", (image // patch) ** 2 + 1, dim)
    norm("v.pre_ln", dim)
    for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
        linear(f"v.blk.0.{part}", dim, dim)
    norm("v.blk.0.ln1", dim)
    norm("v.blk.0.ln2", dim)
    linear("v.blk.0.ffn_up", ff, dim)
    linear("v.blk.0.ffn_down", dim, ff)
    linear("mm.0", hidden, dim)
    linear("mm.2", text_dim, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, written by hand (no imaging library needed)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_tiny_lora(path: Path, *, dim: int = 64, layers: int = 2, rank: int = 4, seed: int = 0) -> Path:
    """A LoRA adapter GGUF for ``write_tiny_llama``'s models (same ``dim`` and ``layers``) on the
    attention's q and v projections, with random weights large enough to change the output."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for i in range(layers):
        for part in ("attn_q", "attn_v"):
            w.add_tensor(f"blk.{i}.{part}.weight.lora_a", (rng.standard_normal((rank, dim)) * 0.5).astype(np.float32))
            w.add_tensor(f"blk.{i}.{part}.weight.lora_b", (rng.standard_normal((dim, rank)) * 0.5).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# A scripted thinker: the model's next token depends only on its last one (each script token has a
# one-hot embedding, the layers add nothing, the output matrix maps it to its successor with a
# large margin), so whatever the sampling, it writes a fixed text after a fixed last prompt token.
# After <|assistant|> it thinks, then answers; after </think> (a template that turned thinking off)
# it only answers. Its own closing tag comes in two tokens ("</", "think>"), so a streaming parser
# sees the tag split across tokens.
THINKER_SPECIAL = ["<|assistant|>", "<think>", "</think>"]
THINKER_THOUGHT = ["The", "▁user", "▁said", "▁hi.", "</", "think>"]
THINKER_THINKING = "The user said hi."
THINKER_ANSWER = "Hello!"
THINKER_OUTPUT = "<think>The user said hi.</think>\nHello!"  # after <|assistant|>
# A tool call in four tokens, for write_tiny_thinker(answer=…) (llama-cpp-python's detokenize
# drops a token longer than 32 bytes).
THINKER_CALL = ("<tool_call>", '{"name":"get_weather",', '"arguments":{"city":"Paris"}}', "</tool_call>")


def write_tiny_thinker(path: Path, *, dim: int = 64, answer: tuple[str, ...] = ("Hello", "!")) -> Path:
    """The scripted thinker; ``answer`` is what it writes after thinking, one token per item."""
    import itertools

    import gguf

    pieces = THINKER_THOUGHT + list(answer)
    script = ["<|assistant|>", "<think>", *THINKER_THOUGHT, "<0x0A>", *answer, "</s>"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + THINKER_SPECIAL
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(pieces)
    types += [gguf.TokenType.USER_DEFINED] * len(THINKER_SPECIAL)
    scores = [0.0] * 259 + [-float(i + 1) for i in range(len(pieces) + len(THINKER_SPECIAL))]
    ids = {t: i for i, t in enumerate(tokens)}
    successor = dict(itertools.pairwise(script))
    successor["</think>"] = answer[0]  # thinking turned off by the template
    vocab, heads, ff = len(tokens), 4, dim * 2
    embeddings = np.zeros((vocab, dim), dtype=np.float32)
    output = np.zeros((vocab, dim), dtype=np.float32)
    for slot, (token, after) in enumerate(successor.items()):
        embeddings[ids[token], slot] = 1.0
        output[ids[after], slot] = 10.0  # logit 10·√dim: every other token is e^-80 as likely

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-thinker")
    w.add_context_length(512)
    w.add_embedding_length(dim)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(dim // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", embeddings)
    zero = np.zeros((dim, dim), dtype=np.float32)
    for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{part}.weight", zero)
    w.add_tensor("blk.0.ffn_gate.weight", np.zeros((ff, dim), dtype=np.float32))
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((ff, dim), dtype=np.float32))
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((dim, ff), dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor("output.weight", output)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
