"""A model card: what the site shows about one manifest, read from the manifest, its config blob,
its small text layers, its README layer and the GGUF header of its model layer.

Everything read here was pushed by someone, so it is read within bounds: small blobs only up to
:data:`MAX_TEXT` (larger ones are listed, not shown), the GGUF header by the client's bounded
reader (:mod:`formats.gguf`, through ``formats.description``). A manifest is immutable, so a
card is cached per worker by manifest digest (:data:`CACHE_SIZE` cards).

The README is a layer of media type :data:`README` (Markdown, UTF-8); a model's one-line
description is the manifest annotation ``org.opencontainers.image.description`` when it has one,
else the first paragraph of the README as plain text."""

from __future__ import annotations

import io
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from formats import mediatypes as mt
from formats.description import ModelDescription, modelfile_settings
from formats.digest import Digest
from formats.gguf import GGUFError, read_header_from
from formats.manifest import Manifest, ManifestError
from registry.storage import StorageError

README = mt.HANGAR_README
DESCRIPTION_ANNOTATION = "org.opencontainers.image.description"
MAX_TEXT = 256 * 1024  # templates, system prompts, parameters, licences, READMEs shown
MAX_CONFIG = 1 << 20
MAX_DESCRIPTION = 300
CACHE_SIZE = 2048
# A GGUF header is read from the start of the model blob, first this much, then twice as much
# while it runs past what was read, up to MAX_HEADER (vocabularies of 262K tokens take ~5 MB).
FIRST_HEADER_READ = 1 << 20
MAX_HEADER = 64 << 20

# What a layer is called on the page (ollama.com's words).
KINDS = {
    mt.OLLAMA_MODEL: "model",
    mt.OLLAMA_PROJECTOR: "projector",
    mt.OLLAMA_ADAPTER: "adapter",
    mt.OLLAMA_TEMPLATE: "template",
    mt.OLLAMA_PROMPT: "template",
    mt.OLLAMA_SYSTEM: "system",
    mt.OLLAMA_PARAMS: "params",
    mt.OLLAMA_MESSAGES: "messages",
    mt.OLLAMA_LICENSE: "license",
    README: "readme",
}
TEXT_KINDS = {"template", "system", "params", "messages", "license", "readme"}


@dataclass
class Layer:
    kind: str
    media_type: str
    digest: str
    size: int
    text: str | None = None  # small text layers' content


@dataclass
class Card:
    digest: str
    media_type: str
    size: int  # config and layers
    layers: list[Layer] = field(default_factory=list)
    architecture: str = ""
    parameters: str = ""  # parameter count, "7B"
    quantization: str = ""
    context_length: int | None = None
    capabilities: list[str] = field(default_factory=list)
    readme: str = ""
    description: str = ""
    modelfile_body: list[str] = field(default_factory=list)  # instructions after FROM
    error: str = ""

    @property
    def inputs(self) -> str:
        return "Text, Image" if "vision" in self.capabilities else "Text"

    def modelfile(self, name: str) -> str:
        """The Modelfile that recreates this model from ``name``."""
        return "\n".join([f"FROM {name}", *self.modelfile_body]) + "\n"


_CACHE: OrderedDict[str, Card] = OrderedDict()


_READMES: OrderedDict[str, str] = OrderedDict()
README_CACHE_SIZE = 256


async def readme(store: Any, raw: bytes) -> str:
    """The README of the manifest ``raw`` ("" without one), read alone: the model page needs
    nothing else from the blobs (its facts are in the database), so it never parses a GGUF
    header. Cached by manifest digest, :data:`README_CACHE_SIZE` of them."""
    digest = str(Digest.of_bytes(raw))
    made = _CACHE.get(digest)
    if made is not None:
        return made.readme
    if digest in _READMES:
        _READMES.move_to_end(digest)
        return _READMES[digest]
    text = ""
    try:
        layer = next((d for d in Manifest.parse(raw).layers if d.media_type == README), None)
    except ManifestError:
        layer = None
    if layer is not None:
        data = await _small(store, layer.digest, layer.size, MAX_TEXT)
        text = data.decode("utf-8", errors="replace") if data is not None else ""
    _READMES[digest] = text
    while len(_READMES) > README_CACHE_SIZE:
        _READMES.popitem(last=False)
    return text


def cached(digest: str) -> Card | None:
    """The card of manifest ``digest`` if this worker has made it (a page then needs no read)."""
    found = _CACHE.get(digest)
    if found is not None:
        _CACHE.move_to_end(digest)
    return found


async def card(store: Any, raw: bytes) -> Card:
    """The card of the manifest ``raw`` (cached by its digest)."""
    digest = str(Digest.of_bytes(raw))
    cached = _CACHE.get(digest)
    if cached is not None:
        _CACHE.move_to_end(digest)
        return cached
    made = await _make(store, digest, raw)
    _CACHE[digest] = made
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return made


async def _small(store: Any, digest: Digest, size: int, limit: int) -> bytes | None:
    """A small blob's bytes; None when it is over ``limit`` or missing."""
    if size > limit:
        return None
    parts = []
    try:
        async for part in store.read(digest, 0, size):
            parts.append(part)
    except StorageError:
        return None
    return b"".join(parts)


def _json(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


async def _make(store: Any, digest: str, raw: bytes) -> Card:
    try:
        manifest = Manifest.parse(raw)
    except ManifestError as e:
        return Card(digest, "", 0, error=f"manifest: {e}")
    out = Card(digest, manifest.media_type, sum(d.size for d in manifest.blobs()))
    if manifest.is_index:
        out.error = "an index of several manifests"
        return out
    problems: list[str] = []
    config: Any = {}
    if manifest.config is not None:
        config = _json(await _small(store, manifest.config.digest, manifest.config.size, MAX_CONFIG)) or {}
    info = ModelDescription(config=config if isinstance(config, dict) else {})
    model_layer: Digest | None = None
    model_size = 0
    for d in manifest.layers:
        kind = KINDS.get(d.media_type, "blob")
        layer = Layer(kind, d.media_type, str(d.digest), d.size)
        out.layers.append(layer)
        if kind in TEXT_KINDS:
            data = await _small(store, d.digest, d.size, MAX_TEXT)
            if data is None:
                problems.append(f"{kind}: larger than {MAX_TEXT} bytes, not shown")
                continue
            layer.text = data.decode("utf-8", errors="replace")
        if kind == "model" and model_layer is None:
            model_layer, model_size = d.digest, d.size
        elif kind == "template":
            info.template = layer.text
        elif kind == "system":
            info.system = layer.text
        elif kind == "params":
            params = _json(data)
            info.parameters = params if isinstance(params, dict) else {}
        elif kind == "messages":
            messages = _json(data)
            info.messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
        elif kind == "license":
            info.licenses.append(layer.text or "")
        elif kind == "projector":
            info.projectors.append(Path(str(d.digest)))
        elif kind == "adapter":
            info.adapters.append(Path(str(d.digest)))
        elif kind == "readme" and not out.readme:
            out.readme = layer.text or ""
    if model_layer is not None:
        try:
            info.gguf, info.tensors = await _gguf(store, model_layer, model_size)
        except (GGUFError, StorageError) as e:
            problems.append(f"model file: {e}")
    out.architecture = info.architecture
    out.parameters = info.parameter_size
    out.quantization = info.quantization
    context = info.arch_value("context_length")
    out.context_length = context if isinstance(context, int) and not isinstance(context, bool) else None
    out.capabilities = [c for c in info.capabilities if c != "completion"] if model_layer else []
    out.description = _description(manifest.annotations.get(DESCRIPTION_ANNOTATION) or _first_paragraph(out.readme))
    out.modelfile_body = modelfile_settings(info)
    out.error = "; ".join(problems)
    return out


async def _gguf(store: Any, digest: Digest, size: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The key/values (arrays dropped) and tensors of a GGUF blob; empty if it is not a GGUF."""
    want = min(size, FIRST_HEADER_READ)
    while True:
        head = await _start(store, digest, want)
        if head[:4] != b"GGUF":
            return {}, []
        try:
            header = await run_in_threadpool(read_header_from, io.BytesIO(head), size, 0)
            return header.metadata, header.tensors
        except GGUFError as e:
            if "truncated" not in str(e) or want >= min(size, MAX_HEADER):
                raise
            want = min(size, MAX_HEADER, want * 2)


async def _start(store: Any, digest: Digest, length: int) -> bytes:
    parts = [part async for part in store.read(digest, 0, length)]
    return b"".join(parts)


_MARKUP = re.compile(r"[`*_>#\[\]]|!\[[^\]]*\]\([^)]*\)|\]\([^)]*\)")


def _first_paragraph(markdown: str) -> str:
    """The first paragraph of prose in a README (headings, HTML and fences skipped), as text."""
    lines: list[str] = []
    fence = False
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fence = not fence
            continue
        if fence or stripped.startswith(("#", "<", "|", "---", "===")) or stripped.startswith("!["):
            if lines:
                break
            continue
        if not stripped:
            if lines:
                break
            continue
        lines.append(stripped)
    text = " ".join(lines)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return _MARKUP.sub("", text)


def _description(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1].rstrip() + "…"
