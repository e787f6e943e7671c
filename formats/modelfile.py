"""The Modelfile: parsing (for ``hangar create``) and quoting values (for ``show --modelfile``),
with Ollama's grammar and error messages.

A Modelfile is a list of ``INSTRUCTION value`` lines (UTF-8, or UTF-16 with its byte-order mark).
Instructions are case-insensitive; ``#`` starts a comment where an instruction could start. A
value runs to the end of its line, unless it opens with ``\"\"\"`` (it then runs until a line ends
with ``\"\"\"``, newlines kept) or with a single ``"`` (until the text ends with ``"``).
``PARAMETER`` and ``MESSAGE`` take a name or a role first; parameter names are case-sensitive, as
in Ollama.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from formats.options import OptionError, parse_parameter

INSTRUCTIONS = (
    "from", "license", "template", "system", "adapter", "draft",
    "renderer", "parser", "parameter", "message", "requires",
)  # fmt: skip
ROLES = ("system", "user", "assistant")

_INSTRUCTION_RE = re.compile(r"([A-Za-z]+)(?:[ \t]+|$)")
_PARAMETER_RE = re.compile(r"([A-Za-z0-9_]+)[ \t]+(.*)", re.S)
_MESSAGE_RE = re.compile(r"(\S+)[ \t]+(.*)", re.S)


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


def decode(data: bytes) -> str:
    """A Modelfile's text from its bytes: UTF-8, or UTF-16 when a byte-order mark says so (as
    Ollama's reader honours one); ModelfileError when it is neither."""
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")  # the BOM picks the byte order and is dropped
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ModelfileError(f"the Modelfile is not UTF-8 (or UTF-16 with a byte-order mark): {e.reason}") from None


def parse(text: str) -> Modelfile:
    """A Modelfile's instructions; ModelfileError names the line and what is wrong."""
    # Lines end at \n; a \r before it is whitespace around a bare value, but stays part of a
    # quoted value running over several lines, as in Ollama.
    lines = text.removeprefix("\ufeff").split("\n")
    out = Modelfile()
    froms: list[str] = []
    i = 0
    while i < len(lines):
        line_no = i + 1
        line = lines[i].lstrip()
        if not line.strip() or line.startswith("#"):
            i += 1
            continue
        m = _INSTRUCTION_RE.match(line)
        name = m.group(1).lower() if m else ""
        if name not in INSTRUCTIONS:
            quoted = ", ".join(f'"{n}"' for n in INSTRUCTIONS[:-1])
            raise ModelfileError(f'(line {line_no}): command must be one of {quoted}, or "requires"')
        assert m is not None
        rest = line[m.end() :]
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
    rest = rest.lstrip()
    if rest.startswith('"""'):
        opening, body = '"""', rest[3:]
    elif rest.startswith('"'):
        opening, body = '"', rest[1:]
    else:
        return rest.strip(), i + 1
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
        try:
            typed = parse_parameter(key, value)  # names are case-sensitive, as Ollama's
        except OptionError as e:
            raise ModelfileError(f"{where}: {e}") from None
        if typed is None:
            out.warnings.append(f"{where}: parameter '{key}' is no longer supported and was ignored")
        elif key == "stop":
            out.parameters.setdefault("stop", []).append(typed)
        else:
            out.parameters[key] = typed
    elif name == "requires":
        # Ollama checks the version with Go's golang.org/x/mod/semver after adding a "v".
        version = value if value.startswith("v") else "v" + value
        if not is_go_semver(version):
            raise ModelfileError(f"{where}: requires must be a valid semver (e.g. 0.14.0)")
        out.requires = version[1:]
    elif name == "renderer":
        out.renderer = value
    elif name == "parser":
        out.parser = value


_NUMBER = r"(?:0|[1-9][0-9]*)"
_IDENTIFIERS = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_GO_SEMVER_RE = re.compile(
    rf"v{_NUMBER}(?:\.{_NUMBER}(?:\.{_NUMBER}(?:-(?P<pre>{_IDENTIFIERS}))?(?:\+{_IDENTIFIERS})?)?)?"
)


def is_go_semver(version: str) -> bool:
    """golang.org/x/mod/semver.IsValid: ``vMAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]]``, numbers
    without leading zeros, numeric prerelease identifiers too."""
    m = _GO_SEMVER_RE.fullmatch(version)
    if m is None:
        return False
    pre = m.group("pre") or ""
    return not any(p.isdigit() and len(p) > 1 and p[0] == "0" for p in pre.split(".") if pre)


def quote(value: str) -> str:
    """A value written so that :func:`parse` reads it back: see :func:`quote_exact`."""
    return quote_exact(value)[0]


def quote_exact(value: str) -> tuple[str, bool]:
    """A value written as Ollama writes it (bare, else in ``"..."`` or, when it holds a ``"``,
    in ``\"\"\"...\"\"\"``) when :func:`parse` reads that back unchanged, else in the first of the
    other forms that it does; and whether the value reads back exactly. Only a value with a line
    (other than its last) ending in ``\"\"\"`` cannot: the grammar has no escapes. It is then
    written in ``\"\"\"...\"\"\"`` all the same (as Ollama does), and reads back cut short."""
    ollama = value
    if "\n" in value or value.startswith(" ") or value.endswith(" "):
        ollama = f'"""{value}"""' if '"' in value else f'"{value}"'
    for candidate in (ollama, value, f'"{value}"', f'"""{value}"""'):
        if _reads_back(candidate, value):
            return candidate, True
    return f'"""{value}"""', False


def _reads_back(written: str, value: str) -> bool:
    lines = written.split("\n")
    try:
        got, after = _value(lines[0], lines, 0)
    except ModelfileError:
        return False
    return got == value and after == len(lines)
