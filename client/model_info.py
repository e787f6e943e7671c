"""What a local model is: its layers read back (template, system prompt, parameters, messages,
licenses), its config, and what its GGUF says about itself. Shared by ``hangar show`` and the
runtime's ``/api/show``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.store import LocalModel, Store
from registry.oci import mediatypes as mt
from registry.oci.modelfile import quote


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
        }


def inspect(store: Store, model: LocalModel, *, read_gguf: bool = True) -> ModelInfo:
    manifest = model.manifest
    config: dict[str, Any] = {}
    if manifest.config is not None:
        try:
            config = json.loads(store.blob_path(manifest.config.digest).read_bytes())
        except (FileNotFoundError, ValueError):
            config = {}
    info = ModelInfo(model, config if isinstance(config, dict) else {}, None)
    for layer in manifest.layers:
        path = store.blob_path(layer.digest)
        if layer.media_type == mt.OLLAMA_MODEL:
            info.model_path = path
            info.parent = layer.parent or ""
        elif layer.media_type in (mt.OLLAMA_TEMPLATE, mt.OLLAMA_PROMPT):
            info.template = _text(path)
        elif layer.media_type == mt.OLLAMA_SYSTEM:
            info.system = _text(path)
        elif layer.media_type == mt.OLLAMA_PARAMS:
            params = _json(path)
            info.parameters = params if isinstance(params, dict) else {}
        elif layer.media_type == mt.OLLAMA_MESSAGES:
            messages = _json(path)
            info.messages = messages if isinstance(messages, list) else []
        elif layer.media_type == mt.OLLAMA_LICENSE:
            info.licenses.append(_text(path))
        elif layer.media_type == mt.OLLAMA_ADAPTER:
            info.adapters.append(path)
        elif layer.media_type == mt.OLLAMA_PROJECTOR:
            info.projectors.append(path)
    if read_gguf and info.model_path is not None and info.model_path.exists():
        info.gguf, info.tensors, info.special_tokens = read_gguf_metadata(info.model_path)
    return info


def read_gguf_metadata(path: Path, max_array: int = 5) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """GGUF key/values (arrays longer than ``max_array`` replaced by ``[]``, as Ollama's show
    does without --verbose), the tensor list, and the BOS/EOS token texts. Empty if the file is
    not a GGUF."""
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(path, "r")
    except (ValueError, OSError):
        return {}, [], {}
    meta: dict[str, Any] = {}
    special: dict[str, str] = {}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    for role in ("bos", "eos"):
        id_field = reader.fields.get(f"tokenizer.ggml.{role}_token_id")
        if tokens is not None and id_field is not None:
            index = int(id_field.parts[id_field.data[0]][0])
            if 0 <= index < len(tokens.data):
                special[role] = bytes(tokens.parts[tokens.data[index]]).decode("utf-8", errors="replace")
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if not f.types:
            continue
        if f.types[0] == GGUFValueType.ARRAY:
            if len(f.data) > max_array:
                meta[key] = []
                continue
            meta[key] = [_scalar(f.parts[i], f.types[-1]) for i in f.data]
        else:
            meta[key] = _scalar(f.parts[f.data[0]], f.types[0])
    tensors = [
        {"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape], "elements": int(t.n_elements)}
        for t in reader.tensors
    ]
    return meta, tensors, special


def _scalar(part: Any, kind: Any) -> Any:
    from gguf import GGUFValueType

    if kind == GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    value = part.tolist()
    value = value[0] if isinstance(value, list) and len(value) == 1 else value
    return bool(value) if kind == GGUFValueType.BOOL else value


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def human_count(n: int) -> str:
    """Parameter counts as Ollama prints them: 8.0B, 270.4M, 134.5K."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
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
    display = info.model.name.display()
    lines = [
        '# Modelfile generated by "hangar show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {display}",
        "",
    ]
    if info.model_path is not None:
        lines.append(f"FROM {info.model_path}")
    lines += [f"ADAPTER {p}" for p in info.adapters]
    lines += [f"FROM {p}" for p in info.projectors]
    if info.template is not None:
        lines.append(f"TEMPLATE {quote(info.template)}")
    if info.system is not None:
        lines.append(f"SYSTEM {quote(info.system)}")
    for key in ("renderer", "parser", "requires"):
        if info.config.get(key):
            lines.append(f"{key.upper()} {quote(str(info.config[key]))}")
    for name, value in info.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            rendered = quote(item) if isinstance(item, str) else format_value(item)
            lines.append(f"PARAMETER {name} {rendered}")
    lines += [f"LICENSE {quote(text)}" for text in info.licenses]
    for message in info.messages:
        lines.append(f"MESSAGE {message.get('role', 'user')} {quote(str(message.get('content', '')))}")
    return "\n".join(lines) + "\n"
