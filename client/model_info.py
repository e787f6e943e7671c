"""What a local model is: its layers read back from the store (template, system prompt,
parameters, messages, licenses), its config, and what its GGUF says about itself, into a
:class:`ModelInfo` (a ``formats.description.ModelDescription`` with its store entry). Shared by
``hangar show`` and the runtime's ``/api/show``.

Every file read here came from a registry, so it is read within bounds (sizes capped, JSON depth
errors caught, the GGUF header by :mod:`formats.gguf`); a model whose files cannot be read
is still described, with what went wrong in :attr:`ModelInfo.error`, so one bad model never
hides the others."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.store import LocalModel, Store
from formats import mediatypes as mt
from formats.description import ModelDescription
from formats.description import render_modelfile as render_description
from formats.gguf import GGUFError, is_gguf, read_header


@dataclass(kw_only=True)
class ModelInfo(ModelDescription):
    """A local model's description, with the store entry it was read from."""

    model: LocalModel


# Caps on the small blobs a manifest points at (Ollama's are bytes to KiB): a larger one is not read.
MAX_CONFIG = 1 << 20
MAX_TEXT_LAYER = 8 << 20  # templates, system prompts, licenses
MAX_JSON_LAYER = 8 << 20  # parameters, messages


def inspect(store: Store, model: LocalModel, *, read_gguf: bool = True) -> ModelInfo:
    manifest = model.manifest
    problems: list[str] = []
    config: Any = {}
    if manifest.config is not None:
        config = _json(store.blob_path(manifest.config.digest), MAX_CONFIG, "config", problems) or {}
    info = ModelInfo(model=model, config=config if isinstance(config, dict) else {})
    for layer in manifest.layers:
        path = store.blob_path(layer.digest)
        if changed := store.linked_change(layer.digest):
            problems.append(changed)
        if layer.media_type == mt.OLLAMA_MODEL:
            info.model_path = path
            info.parent = layer.parent or ""
        elif layer.media_type in (mt.OLLAMA_TEMPLATE, mt.OLLAMA_PROMPT):
            info.template = _text(path, "template", problems)
        elif layer.media_type == mt.OLLAMA_SYSTEM:
            info.system = _text(path, "system prompt", problems)
        elif layer.media_type == mt.OLLAMA_PARAMS:
            params = _json(path, MAX_JSON_LAYER, "parameters", problems)
            info.parameters = params if isinstance(params, dict) else {}
        elif layer.media_type == mt.OLLAMA_MESSAGES:
            messages = _json(path, MAX_JSON_LAYER, "messages", problems)
            info.messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
        elif layer.media_type == mt.OLLAMA_LICENSE:
            info.licenses.append(_text(path, "license", problems))
        elif layer.media_type == mt.OLLAMA_ADAPTER:
            info.adapters.append(path)
        elif layer.media_type == mt.OLLAMA_PROJECTOR:
            info.projectors.append(path)
    if read_gguf and info.model_path is not None and info.model_path.exists():
        try:
            info.gguf, info.tensors, info.special_tokens = read_gguf_metadata(info.model_path)
        except (GGUFError, OSError) as e:
            problems.append(f"model file: {e}")
    info.error = "; ".join(problems)
    return info


# Headers already read, by file identity and ``max_array``: a listing reads each model file once,
# and a file that failed is not parsed again on every request. Bounded; whole arrays
# (``max_array`` large, for show --verbose) are never kept.
_CACHE: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_CACHE_SIZE = 256
_CACHE_MAX_ARRAY = 64
_cache_lock = threading.Lock()


def read_gguf_metadata(path: Path, max_array: int = 5) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """GGUF key/values (arrays longer than ``max_array`` replaced by ``[]``, as Ollama's show
    does without --verbose), the tensor list, and the BOS/EOS token texts. Empty if the file is
    not a GGUF; :class:`GGUFError` if it is a malformed or hostile one (see formats.gguf)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}, [], {}
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, max_array)
    if max_array <= _CACHE_MAX_ARRAY:
        with _cache_lock:
            cached = _CACHE.get(key)
            if cached is not None:
                _CACHE.move_to_end(key)
        if isinstance(cached, GGUFError):
            raise GGUFError(str(cached))
        if cached is not None:
            meta, tensors, special = cached
            return dict(meta), list(tensors), dict(special)
    result: Any
    if not is_gguf(path):
        result = ({}, [], {})
    else:
        try:
            header = read_header(path, max_array)
            result = (header.metadata, header.tensors, header.special_tokens)
        except GGUFError as e:
            result = e
    if max_array <= _CACHE_MAX_ARRAY:
        with _cache_lock:
            _CACHE[key] = result
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    if isinstance(result, GGUFError):
        raise result
    meta, tensors, special = result
    return dict(meta), list(tensors), dict(special)


def _text(path: Path, what: str = "layer", problems: list[str] | None = None) -> str:
    raw = _read(path, MAX_TEXT_LAYER, what, problems)
    return raw.decode("utf-8", errors="replace") if raw is not None else ""


def _json(path: Path, limit: int = MAX_JSON_LAYER, what: str = "layer", problems: list[str] | None = None) -> Any:
    raw = _read(path, limit, what, problems)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # deep nesting is a RecursionError, not a ValueError
        if problems is not None:
            problems.append(f"{what}: not valid JSON ({type(e).__name__})")
        return None


def _read(path: Path, limit: int, what: str, problems: list[str] | None) -> bytes | None:
    """A small blob's bytes; None (and a problem noted) when it is missing or over ``limit``."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        if problems is not None:
            problems.append(f"{what}: {e}")
        return None
    if len(raw) > limit:
        if problems is not None:
            problems.append(f"{what}: larger than {limit} bytes")
        return None
    return raw


def render_modelfile(info: ModelInfo) -> str:
    """The local model as a Modelfile (Ollama's ``show --modelfile``), FROM naming its files."""
    return render_description(info, info.model.name.display())
