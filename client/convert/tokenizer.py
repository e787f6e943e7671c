"""Tokenizers of Hugging Face checkpoints, as llama.cpp's GGUF vocabulary.

Two kinds:

- SentencePiece (``tokenizer.model``: Llama 2, Mistral, Gemma, Phi-3): the pieces, their scores and
  types are read from the protobuf directly (no sentencepiece library) and written as the
  ``llama`` tokenizer model. A ``tokenizer.json`` BPE with byte fallback (the fast-tokenizer form
  of the same thing) is read the same way, a piece's score being minus the rank of the merge that
  makes it; whether a space is prepended (``add_space_prefix``: Llama, Mistral yes, Gemma 3 no)
  comes from its normalizer or pre-tokenizer.
- byte-level BPE (``tokenizer.json``: Llama 3): tokens and merges as the ``gpt2`` tokenizer model,
  with the pre-tokenizer recognised from its regular expression and written under the name
  llama.cpp knows it by (``PRE_TOKENIZERS``: ``llama-bpe``, ``qwen2`` (Qwen2/2.5/3: digits one by
  one), ``gpt-2``, else ``default``; llama.cpp refuses a model whose name it does not know).
  Without a BOS token (Qwen) none is added.

Added tokens become control tokens when special, user-defined otherwise; the vocabulary is padded
to the model's embedding rows. BOS/EOS, whether to add them, and the chat template come from
``tokenizer_config.json``, ``config.json`` and ``chat_template.jinja``."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.convert.safetensors import CheckpointError

# gguf.TokenType values (the same numbers as SentencePiece's piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2's: Llama 3's with digits split one by one.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The ``tokenizer.ggml.pre`` names this converter writes: each must be one llama.cpp accepts
# (llama-vocab.cpp: "gpt-2", not "gpt2", which is the name of the tokenizer *model*).
# tests/client/test_convert.py loads a converted checkpoint for each.
PRE_TOKENIZERS = ("llama-bpe", "qwen2", "gpt-2", "default")


@dataclass
class Vocab:
    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad → id
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | None = None


def load_vocab(folder: Path, vocab_size: int) -> Vocab:
    if (folder / "tokenizer.model").exists():
        vocab = _sentencepiece(folder / "tokenizer.model")
    elif (folder / "tokenizer.json").exists():
        vocab = _tokenizer_json(folder / "tokenizer.json")
    else:
        raise CheckpointError("no tokenizer: the folder needs tokenizer.model or tokenizer.json")
    _added_tokens(folder, vocab)
    if len(vocab.tokens) > vocab_size:
        raise CheckpointError(f"the tokenizer has {len(vocab.tokens)} tokens, the model {vocab_size} embeddings")
    for i in range(len(vocab.tokens), vocab_size):  # embedding rows the tokenizer does not use
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(-1000.0)
    _special_tokens(folder, vocab)
    return vocab


# -- SentencePiece -------------------------------------------------------------------------------------


def _sentencepiece(path: Path) -> Vocab:
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    add_dummy_prefix: bool | None = None
    for number, value in _fields(path.read_bytes()):
        if number == 1 and isinstance(value, bytes):  # a piece
            piece, score, kind = "", 0.0, NORMAL
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    piece = v.decode("utf-8")
                elif n == 2 and isinstance(v, int):
                    score = struct.unpack("<f", struct.pack("<I", v))[0]
                elif n == 3 and isinstance(v, int):
                    kind = v
            tokens.append(piece)
            scores.append(score)
            types.append(kind if kind in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL)
        elif number == 3 and isinstance(value, bytes):  # normalizer_spec
            for n, v in _fields(value):
                if n == 3 and isinstance(v, int):
                    add_dummy_prefix = bool(v)
    if not tokens:
        raise CheckpointError(f"{path.name}: no SentencePiece pieces in it")
    vocab = Vocab("llama", tokens, types, scores)
    vocab.add_space_prefix = add_dummy_prefix
    for i, kind in enumerate(types):
        if kind == UNKNOWN:
            vocab.special.setdefault("unk", i)
    return vocab


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of one protobuf message (varints and 32-bit values as
    ints, length-delimited values as bytes)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 1:
            out.append((number, int.from_bytes(data[pos : pos + 8], "little")))
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.append((number, data[pos : pos + length]))
            pos += length
        elif wire == 5:
            out.append((number, int.from_bytes(data[pos : pos + 4], "little")))
            pos += 4
        else:
            raise CheckpointError("tokenizer.model is not a SentencePiece model (bad protobuf)")
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise CheckpointError("tokenizer.model is truncated")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


# -- tokenizer.json ------------------------------------------------------------------------------------


def _tokenizer_json(path: Path) -> Vocab:
    doc = json.loads(path.read_text(encoding="utf-8"))
    model = doc.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(f"{path.name}: {model.get('type')} tokenizers are not supported (BPE only)")
    by_id = {int(i): t for t, i in model["vocab"].items()}
    size = max(by_id) + 1 if by_id else 0
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if model.get("byte_fallback"):
        # SentencePiece BPE in fast-tokenizer form: a piece scores minus the rank of its merge.
        rank = {a.replace(" ", "", 1): -float(i) for i, a in enumerate(merges)}
        types = [BYTE if t.startswith("<0x") and t.endswith(">") and len(t) == 6 else NORMAL for t in tokens]
        vocab = Vocab("llama", tokens, types, [rank.get(t, 0.0) for t in tokens])
        vocab.add_space_prefix = _prepends_space(doc)
        return vocab
    return Vocab("gpt2", tokens, [NORMAL] * len(tokens), None, merges, _pre_tokenizer(doc))


def _prepends_space(doc: dict[str, Any]) -> bool:
    """Whether a SentencePiece-style tokenizer.json puts "▁" before the text: a ``Prepend``
    normalizer (Llama 2, Mistral) or a ``Metaspace`` pre-tokenizer that prepends (newer exports);
    Gemma 3's only replaces spaces."""
    steps: list[dict[str, Any]] = []
    for key in ("normalizer", "pre_tokenizer"):
        step = doc.get(key) or {}
        steps += step.get("normalizers") or step.get("pretokenizers") or [step]
    for step in steps:
        if step.get("type") == "Prepend" and step.get("prepend") == "▁":
            return True
        if step.get("type") == "Metaspace" and step.get("prepend_scheme", "always") in ("always", "first"):
            return bool(step.get("add_prefix_space", True))
    return False


def _pre_tokenizer(doc: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer a tokenizer.json describes."""
    pre = doc.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        pattern = (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split" else None
        if pattern == LLAMA3_PATTERN:
            return "llama-bpe"
        if pattern == QWEN2_PATTERN:
            return "qwen2"
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return "gpt-2"  # GPT-2's own regular expression, inside the ByteLevel step
    return "default"


# -- added and special tokens --------------------------------------------------------------------------


def _added_tokens(folder: Path, vocab: Vocab) -> None:
    added: list[dict[str, Any]] = []
    if (folder / "tokenizer.json").exists():
        added = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
    for item in added:
        token_id, content = int(item["id"]), str(item["content"])
        while len(vocab.tokens) <= token_id:
            vocab.tokens.append(f"[PAD{len(vocab.tokens)}]")
            vocab.types.append(UNUSED)
            if vocab.scores is not None:
                vocab.scores.append(-1000.0)
        vocab.tokens[token_id] = content
        vocab.types[token_id] = CONTROL if item.get("special") else USER_DEFINED


def _special_tokens(folder: Path, vocab: Vocab) -> None:
    config = _json(folder / "config.json")
    tok_config = _json(folder / "tokenizer_config.json")
    index = {t: i for i, t in enumerate(vocab.tokens)}
    for role in ("bos", "eos", "unk", "pad"):
        value = tok_config.get(f"{role}_token")
        text = value.get("content") if isinstance(value, dict) else value
        if isinstance(text, str) and text in index:
            vocab.special[role] = index[text]
            continue
        from_config = config.get(f"{role}_token_id")
        if isinstance(from_config, list) and from_config:
            from_config = from_config[0]
        if isinstance(from_config, int) and 0 <= from_config < len(vocab.tokens):
            vocab.special[role] = from_config
    if isinstance(tok_config.get("add_bos_token"), bool):
        vocab.add_bos = tok_config["add_bos_token"]
    elif vocab.model == "llama":
        vocab.add_bos = True
    elif "bos" in vocab.special:
        vocab.add_bos = _post_processor_adds(folder, vocab.tokens[vocab.special["bos"]])
    else:  # no BOS token (Qwen): none to add, whatever llama.cpp's default for the pre-tokenizer
        vocab.add_bos = False
    if isinstance(tok_config.get("add_eos_token"), bool):
        vocab.add_eos = tok_config["add_eos_token"]
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str) and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    vocab.chat_template = template if isinstance(template, str) else None


def _post_processor_adds(folder: Path, bos: str) -> bool:
    doc = _json(folder / "tokenizer.json")
    return bos in json.dumps(doc.get("post_processor") or {})


def _json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise CheckpointError(f"{path.name} is not valid JSON") from None
    return value if isinstance(value, dict) else {}


def write_vocab(writer: Any, vocab: Vocab) -> None:
    """Add the vocabulary's keys to a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
               "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}  # fmt: skip
    for role, token_id in vocab.special.items():
        setters[role](token_id)
    if vocab.add_bos is not None:
        writer.add_add_bos_token(vocab.add_bos)
    if vocab.add_eos is not None:
        writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
