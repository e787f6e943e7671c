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
    projector: bytes | None = None,
) -> Any:
    """Put a GGUF into a store as a model with the given layers (as ``hangar create`` would)."""
    import json

    from registry.oci import mediatypes as mt
    from registry.oci.manifest import Descriptor, Manifest
    from registry.oci.names import ModelName

    store.ensure()
    digest, size = store.add_blob_file(gguf_path)
    layers = [Descriptor(mt.OLLAMA_MODEL, digest, size)]
    if projector is not None:
        d, n = store.add_blob_bytes(projector)
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
    }
    cd, cn = store.add_blob_bytes(json.dumps(config).encode() + b"\n")
    model_name = ModelName.parse(name)
    store.put_manifest(model_name, Manifest.build(Descriptor(mt.DOCKER_CONFIG, cd, cn), layers).raw)
    return model_name
