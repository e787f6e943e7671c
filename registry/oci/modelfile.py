"""The Modelfile: parsing (for ``hangar create``) and quoting values (for ``show --modelfile``),
with Ollama's grammar and error messages.

A Modelfile is a list of ``INSTRUCTION value`` lines. Instructions are case-insensitive; ``#``
starts a comment where an instruction could start. A value runs to the end of its line, unless it
opens with ``\"\"\"`` (it then runs until a line ends with ``\"\"\"``, newlines kept) or with a single
``"`` (until the text ends with ``"``). ``PARAMETER`` and ``MESSAGE`` take a name or a role first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from registry.oci.options import OptionError, parse_parameter

INSTRUCTIONS = (
    "from", "license", "template", "system", "adapter", "draft",
    "renderer", "parser", "parameter", "message", "requires",
)  # fmt: skip
ROLES = ("system", "user", "assistant")

_INSTRUCTION_RE = re.compile(r"([A-Za-z]+)(?:[ \t]+|$)")
_PARAMETER_RE = re.compile(r"([A-Za-z0-9_]+)[ \t]+(.*)", re.S)
_MESSAGE_RE = re.compile(r"(\S+)[ \t]+(.*)", re.S)
_SEMVER_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?")


class ModelfileError(ValueError):
    pass


@dataclass
class Modelfile:
    """What a Modelfile asks for (paths as written: the caller resolves them)."""

    base: str = ""  # FROM: a path or a model name
    projectors: list[str] = field(default_factory=list)  # further FROM lines
    adapters: list[str] = field(default_factory=list)
    drafts: list[str] = field(default_factory=list)
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    licenses: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    requires: str | None = None
    renderer: str | None = None
    parser: str | None = None
    warnings: list[str] = field(default_factory=list)


def parse(text: str) -> Modelfile:
    """A Modelfile's instructions; ModelfileError names the line and what is wrong."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    lines = text.split("\n")
    out = Modelfile()
    froms: list[str] = []
    i = 0
    while i < len(lines):
        line_no = i + 1
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        m = _INSTRUCTION_RE.match(stripped)
        name = m.group(1).lower() if m else ""
        if name not in INSTRUCTIONS:
            quoted = ", ".join(f'"{n}"' for n in INSTRUCTIONS[:-1])
            raise ModelfileError(f'(line {line_no}): command must be one of {quoted}, or "requires"')
        assert m is not None
        rest = stripped[m.end() :]
        key = ""
        if name in ("parameter", "message"):
            head = (_PARAMETER_RE if name == "parameter" else _MESSAGE_RE).match(rest)
            if head is None:
                what = "a parameter name and a value" if name == "parameter" else "a role and a message"
                raise ModelfileError(f"(line {line_no}): {name.upper()} needs {what}")
            key, rest = head.group(1), head.group(2)
        value, i = _value(rest, lines, i)
        _apply(out, froms, name, key, value, line_no)
    if not froms:
        raise ModelfileError("no FROM line")
    out.base, out.projectors = froms[0], froms[1:]
    return out


def _value(rest: str, lines: list[str], i: int) -> tuple[str, int]:
    """The value starting with ``rest`` on line ``i``, and the index of the line after it."""
    rest = rest.strip()
    if rest.startswith('"""'):
        opening, body = '"""', rest[3:]
    elif rest.startswith('"'):
        opening, body = '"', rest[1:]
    else:
        return rest, i + 1
    while True:
        closed = body.rstrip()
        if closed.endswith(opening):
            return closed[: -len(opening)], i + 1
        i += 1
        if i >= len(lines):
            raise ModelfileError("unexpected EOF")
        body += "\n" + lines[i]


def _apply(out: Modelfile, froms: list[str], name: str, key: str, value: str, line_no: int) -> None:
    where = f"(line {line_no})"
    if name in ("from", "adapter", "draft", "requires", "renderer", "parser") and not value:
        raise ModelfileError(f"{where}: {name.upper()} needs a value")
    if name == "from":
        froms.append(value)
    elif name == "adapter":
        out.adapters = [value]  # a later ADAPTER replaces an earlier one
    elif name == "draft":
        out.drafts = [value]
    elif name == "template":
        out.template = value
    elif name == "system":
        out.system = value
    elif name == "license":
        out.licenses.append(value)
    elif name == "message":
        if key not in ROLES:
            raise ModelfileError(f'{where}: role must be one of "system", "user", or "assistant"')
        out.messages.append({"role": key, "content": value})
    elif name == "parameter":
        key = key.lower()
        try:
            typed = parse_parameter(key, value)
        except OptionError as e:
            raise ModelfileError(f"{where}: {e}") from None
        if typed is None:
            out.warnings.append(f"{where}: parameter '{key}' is no longer supported and was ignored")
        elif key == "stop":
            out.parameters.setdefault("stop", []).append(typed)
        else:
            out.parameters[key] = typed
    elif name == "requires":
        m = _SEMVER_RE.fullmatch(value)
        if m is None:
            raise ModelfileError(f"{where}: REQUIRES needs a version such as 0.12.0, not {value!r}")
        out.requires = value[1:] if value.startswith("v") else value
    elif name == "renderer":
        out.renderer = value
    elif name == "parser":
        out.parser = value


def quote(value: str) -> str:
    """A value written so that ``parse`` reads it back unchanged: bare when that is safe, else in
    ``"..."`` or, when it holds a ``"``, in ``\"\"\"...\"\"\"`` (Ollama's quoting, made safe for
    empty values and values that begin with a quote)."""
    if value and "\n" not in value and value == value.strip() and not value.startswith('"'):
        return value
    if '"' not in value:
        return f'"{value}"'
    if '"""' in value:
        raise ModelfileError(f"this value cannot be written in a Modelfile: {value[:40]!r}")
    return f'"""{value}"""'
