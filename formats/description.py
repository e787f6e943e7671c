"""What a model is, read from its config, its layers and its GGUF metadata: architecture,
parameter size, quantization, capabilities, Ollama's ``details``, and the model written back as a
Modelfile. Pure (no files are read here): the client reads a local model's layers into it
(``client.model_info``), the registry's web pages a pushed model's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from formats.modelfile import quote_exact
from formats.thinking import model_thinks


@dataclass
class ModelDescription:
    config: dict[str, Any] = field(default_factory=dict)
    model_path: Path | None = None
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


def render_modelfile(info: ModelDescription, display: str) -> str:
    """The model as a Modelfile (Ollama's ``show --modelfile``). Every value is written so that
    ``hangar create`` reads it back unchanged; the few that the grammar cannot hold (a line ending
    in three quotes inside a value, see formats.modelfile.quote_exact) are written all the
    same, after a comment saying so: ``show`` always answers."""
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
    return "\n".join(lines + modelfile_settings(info)) + "\n"


def modelfile_settings(info: ModelDescription) -> list[str]:
    """The Modelfile instructions after the FROM and ADAPTER lines: template, system prompt,
    renderer, parser, requirements, parameters, licences and messages, quoted as
    ``render_modelfile`` says."""
    lines: list[str] = []

    def add(instruction: str, value: str) -> None:
        written, exact = quote_exact(value)
        if not exact:
            what = instruction.split()[0]
            lines.append(f'# {what} below holds a line ending in """ and does not read back unchanged')
        lines.append(f"{instruction} {written}")

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
    return lines
