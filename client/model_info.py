"""What a local model is: its layers read back (template, system prompt, parameters, messages,
licenses), its config, and what its GGUF says about itself. Shared by ``hangar show`` and the
runtime's ``/api/show``.

Every file read here came from a registry, so it is read within bounds (sizes capped, JSON depth
errors caught, the GGUF header by :mod:`client.gguf_header`); a model whose files cannot be read
is still described, with what went wrong in :attr:`ModelInfo.error`, so one bad model never
hides the others."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.gguf_header import GGUFError, is_gguf, read_header
from client.store import LocalModel, Store
from formats import mediatypes as mt
from formats.modelfile import quote_exact


@dataclass
class ModelInfo:
    model: LocalModel
    config: dict[str, Any]
    model_path: Path | None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    adapters: list[Path] = field(default_factory=list)
    projectors: list[Path] = field(default_factory=list)
    parent: str = ""
    gguf: dict[str, Any] = field(default_factory=dict)  # metadata key/values (arrays summarised)
    tensors: list[dict[str, Any]] = field(default_factory=list)
    special_tokens: dict[str, str] = field(default_factory=dict)  # "bos", "eos": their text
    error: str = ""  # why part of the model could not be read (it cannot be run)

    @property
    def architecture(self) -> str:
        return str(self.gguf.get("general.architecture") or self.config.get("model_family") or "")

    def arch_value(self, key: str) -> Any:
        return self.gguf.get(f"{self.architecture}.{key}")

    @property
    def parameter_size(self) -> str:
        if self.config.get("model_type"):
            return str(self.config["model_type"])
        count = self.gguf.get("general.parameter_count") or sum(t["elements"] for t in self.tensors)
        return human_count(int(count)) if count else ""

    @property
    def quantization(self) -> str:
        return str(self.config.get("file_type") or file_type_name(self.gguf.get("general.file_type")))

    @property
    def capabilities(self) -> list[str]:
        caps = []
        is_embedding = self.gguf.get(f"{self.architecture}.pooling_type") is not None or self.architecture in (
            "bert", "nomic-bert", "jina-bert-v2",
        )  # fmt: skip
        caps.append("embedding" if is_embedding else "completion")
        template = self.template or str(self.gguf.get("tokenizer.chat_template") or "")
        if ".Tools" in template or "tools" in template:
            caps.append("tools")
        if ".Suffix" in template:
            caps.append("insert")
        if self.projectors:
            caps.append("vision")
        from formats.thinking import model_thinks

        jinja = self.gguf.get("tokenizer.chat_template") if self.template is None else None
        if model_thinks(self.config, self.template, jinja if isinstance(jinja, str) else None, self.architecture):
            caps.append("thinking")
        # What the config lists (a create's `info`, a converted model) counts too.
        listed = self.config.get("capabilities")
        for cap in listed if isinstance(listed, list) else []:
            if isinstance(cap, str) and cap not in caps:
                caps.append(cap)
        return caps

    def details(self) -> dict[str, Any]:
        family = self.architecture
        return {
            "parent_model": self.parent,
            "format": self.config.get("model_format") or "gguf",
            "family": family,
            "families": self.config.get("model_families") or ([family] if family else None),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
            **({"error": self.error} if self.error else {}),
        }


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
    info = ModelInfo(model, config if isinstance(config, dict) else {}, None)
    for layer in manifest.layers:
        path = store.blob_path(layer.digest)
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
    not a GGUF; :class:`GGUFError` if it is a malformed or hostile one (see client.gguf_header)."""
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


def human_count(n: int) -> str:
    """Parameter counts as Ollama's format.HumanNumber prints them: 7B, 8.0B, 1.38M, 500K."""
    for unit, scale, decimals in (("B", 10**9, 1), ("M", 10**6, 2)):
        if n >= scale:
            return f"{n // scale}{unit}" if n % scale == 0 else f"{n / scale:.{decimals}f}{unit}"
    if n >= 10**3:
        return f"{n / 10**3:.0f}K"
    return str(n)


def file_type_name(value: Any) -> str:
    """The quantization name of a GGUF ``general.file_type`` (``Q4_K_M``, ``F16`` …)."""
    if value is None:
        return ""
    try:
        from gguf import LlamaFileType

        name = LlamaFileType(int(value)).name
    except (ImportError, ValueError):
        return str(value)
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


# -- rendering ------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A parameter value as Go prints it: strings quoted, bools lower-case."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parameter_lines(params: dict[str, Any]) -> list[str]:
    """``name<padding> value`` lines (name left-aligned in 30 columns), lists one line each."""
    lines = []
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{name:<30} {format_value(item)}")
    return lines


def render_modelfile(info: ModelInfo) -> str:
    """The model as a Modelfile (Ollama's ``show --modelfile``). Every value is written so that
    ``hangar create`` reads it back unchanged; the few that the grammar cannot hold (a line ending
    in three quotes inside a value, see formats.modelfile.quote_exact) are written all the
    same, after a comment saying so: ``show`` always answers."""
    display = info.model.name.display()
    lines = [
        '# Modelfile generated by "hangar show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {display}",
        "",
    ]

    def add(instruction: str, value: str) -> None:
        written, exact = quote_exact(value)
        if not exact:
            what = instruction.split()[0]
            lines.append(f'# {what} below holds a line ending in """ and does not read back unchanged')
        lines.append(f"{instruction} {written}")

    if info.model_path is not None:
        lines.append(f"FROM {info.model_path}")
    lines += [f"ADAPTER {p}" for p in info.adapters]
    lines += [f"FROM {p}" for p in info.projectors]
    if info.template is not None:
        add("TEMPLATE", info.template)
    if info.system is not None:
        add("SYSTEM", info.system)
    for key in ("renderer", "parser", "requires"):
        if info.config.get(key):
            add(key.upper(), str(info.config[key]))
    for name, value in info.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                add(f"PARAMETER {name}", item)
            else:
                lines.append(f"PARAMETER {name} {format_value(item)}")
    for text in info.licenses:
        add("LICENSE", text)
    for message in info.messages:
        add(f"MESSAGE {message.get('role', 'user')}", str(message.get("content", "")))
    return "\n".join(lines) + "\n"
