"""Thinking models (§8.3–8.4 of shared/spec/ollama-protocol.md): whether a model thinks, what a
request's ``think`` asks for, and the parsers that split a model's output into ``thinking`` and
``content`` while it streams.

A model thinks when its config lists ``thinking``, when its config names a built-in ``parser``
that thinks, or when its template asks for it (a Go template that reads ``.Think``/``.ThinkLevel``
or writes ``.Thinking`` between tags; a Jinja template with ``enable_thinking`` or ``<think>``).
Such a model thinks unless the request says ``think: false``, as in Ollama. The thinking is
written between two tags (``<think>`` and ``</think>`` unless the template writes ``.Thinking``
between others); a template that ends the prompt with the opening tag starts the model inside
its thinking. Tags may arrive split across tokens: the parser holds back any tail that could be
the start of one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

LEVELS = ("low", "medium", "high", "max")
DEFAULT_TAGS = ("<think>", "</think>")

# Ollama's built-in output parsers (a model config's ``parser``, the Modelfile's PARSER) that
# separate thinking, by the tags their models write. Tool calls in the content are found by
# runtime.prompts.parse_tool_calls (``<tool_call>`` JSON, as these families write them).
THINKING_PARSERS: dict[str, tuple[str, str]] = {
    "qwen3": DEFAULT_TAGS,
    "qwen3-thinking": DEFAULT_TAGS,
    "qwen3-vl-thinking": DEFAULT_TAGS,
    "deepseek-r1": DEFAULT_TAGS,
    "deepseek3": DEFAULT_TAGS,
    "cogito": DEFAULT_TAGS,
    "olmo3-think": DEFAULT_TAGS,
    "nemotron-3-nano": DEFAULT_TAGS,
    "glm-4.7": DEFAULT_TAGS,
    "ministral": ("[THINK]", "[/THINK]"),
}

_THINK_FIELD_RE = re.compile(r"\{\{-?[^}]*\.(?:Think|ThinkLevel|IsThinkSet)\b")
_TAGGED_THINKING_RE = re.compile(
    r"(<[^<>\s{}]+>|\[[A-Z_]+\])\s*\{\{-?\s*\$?[A-Za-z_0-9]*\.Thinking\s*-?\}\}\s*(</[^<>\s{}]+>|\[/[A-Z_]+\])"
)


class ThinkError(ValueError):
    """A request's ``think`` that cannot be honoured: a 400 with this text."""


@dataclass(frozen=True)
class Think:
    """What a request asked for, after Ollama's default (on, for a model that thinks)."""

    on: bool = False
    level: str = ""  # "low" … "max" when a level was asked for
    explicit: bool = False  # Ollama's .IsThinkSet: set by the request, or defaulted for a thinking model

    def template_values(self) -> dict[str, Any]:
        """``.Think``, ``.ThinkLevel`` and ``.IsThinkSet`` for Go templates. As Ollama's
        ``ThinkValue.String()``, plain ``true`` reads as level ``medium``."""
        level = self.level or ("medium" if self.on else "")
        return {"Think": self.on, "ThinkLevel": level, "IsThinkSet": self.explicit}


def request_think(value: Any, capabilities: list[str], model: str) -> Think:
    """The ``think`` of a request (bool, a level, or absent) for a model with ``capabilities``."""
    thinks = "thinking" in capabilities
    if value is None:
        return Think(on=True, explicit=True) if thinks else Think()
    if isinstance(value, str):
        if value not in LEVELS:
            allowed = ", ".join(f'"{level}"' for level in reversed(LEVELS[:3]))
            raise ThinkError(f'invalid think value: "{value}" (must be {allowed}, "max", true, or false)')
    elif not isinstance(value, bool):
        raise ThinkError('think must be a boolean or a string ("high", "medium", "low", "max", true, or false)')
    if value is False:
        return Think(on=False, explicit=True)
    if not thinks:
        raise ThinkError(f'"{model}" does not support thinking')
    return Think(on=True, level=value if isinstance(value, str) else "", explicit=True)


def openai_think(body: dict[str, Any]) -> Any:
    """``reasoning_effort`` (or ``reasoning.effort``) of an OpenAI request as a native ``think``
    value, None when absent (§9.1)."""
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if effort is None and isinstance(reasoning, dict):
        effort = reasoning.get("effort")
    if effort is None:
        return None
    mapping = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max"}
    mapping.update(xhigh="max", ultra="max")
    if not isinstance(effort, str) or effort not in mapping:
        raise ThinkError(
            f"invalid reasoning value: {effort!r} (must be one of none, minimal, low, medium, high, max, xhigh, ultra)"
        )
    return mapping[effort]


# -- which models think, and with which tags -----------------------------------------------------------


def template_thinks(go_template: str | None, jinja_template: str | None = None) -> bool:
    """Whether a model's template asks for thinking."""
    if go_template is not None:
        return bool(_THINK_FIELD_RE.search(go_template) or _TAGGED_THINKING_RE.search(go_template))
    if jinja_template:
        return "enable_thinking" in jinja_template or "<think>" in jinja_template
    return False


def model_thinks(config: dict[str, Any], go_template: str | None, jinja_template: str | None = None) -> bool:
    listed = config.get("capabilities")
    if isinstance(listed, list) and "thinking" in listed:
        return True
    if str(config.get("parser") or "") in THINKING_PARSERS:
        return True
    return template_thinks(go_template, jinja_template)


def tags_for(config: dict[str, Any], go_template: str | None, jinja_template: str | None = None) -> tuple[str, str]:
    """The tags a model writes its thinking between: its built-in parser's, else the ones its
    template writes ``.Thinking`` between, else ``<think>``/``</think>``."""
    parser = str(config.get("parser") or "")
    if parser in THINKING_PARSERS:
        return THINKING_PARSERS[parser]
    for source in (go_template, jinja_template):
        found = _TAGGED_THINKING_RE.search(source or "")
        if found:
            return found.group(1), found.group(2)
    return DEFAULT_TAGS


# -- splitting output ----------------------------------------------------------------------------------

_LOOKING, _OPENED, _THINKING, _CLOSED, _CONTENT = range(5)


class ThinkingParser:
    """Splits streamed text into (thinking, content). Thinking is what comes between the opening
    tag (at the very start, after whitespace; or already written by the prompt, ``started``) and
    the closing tag; whitespace right inside the tags and right after the closing one is dropped.
    Output that does not start with the opening tag is all content."""

    def __init__(self, open_tag: str = DEFAULT_TAGS[0], close_tag: str = DEFAULT_TAGS[1], started: bool = False):
        self.open_tag, self.close_tag = open_tag, close_tag
        self.state = _OPENED if started else _LOOKING
        self.buffer = ""

    @property
    def in_thinking(self) -> bool:
        return self.state in (_LOOKING, _OPENED, _THINKING)

    @property
    def thinking_done(self) -> bool:
        """Whether the closing tag has been read (content may follow)."""
        return self.state in (_CLOSED, _CONTENT)

    def feed(self, text: str) -> tuple[str, str]:
        """The thinking and the content that ``text`` completes (either may be empty)."""
        self.buffer += text
        thinking: list[str] = []
        content: list[str] = []
        while True:
            if self.state == _LOOKING:
                head = self.buffer.lstrip()
                if head.startswith(self.open_tag):
                    self.buffer = head[len(self.open_tag) :]
                    self.state = _OPENED
                    continue
                if not head or self.open_tag.startswith(head):
                    break  # may still become the opening tag
                self.state = _CONTENT
                continue
            if self.state == _OPENED:
                self.buffer = self.buffer.lstrip()
                if not self.buffer:
                    break
                self.state = _THINKING
                continue
            if self.state == _THINKING:
                end = self.buffer.find(self.close_tag)
                if end >= 0:
                    thinking.append(self.buffer[:end].rstrip())
                    self.buffer = self.buffer[end + len(self.close_tag) :]
                    self.state = _CLOSED
                    continue
                # Hold back a tail that may be the start of the closing tag, and trailing
                # whitespace (dropped if the closing tag follows it).
                keep = _partial_suffix(self.buffer, self.close_tag)
                ready = self.buffer[: len(self.buffer) - keep]
                stripped = ready.rstrip()
                thinking.append(stripped)
                self.buffer = self.buffer[len(stripped) :]
                break
            if self.state == _CLOSED:
                self.buffer = self.buffer.lstrip()
                if not self.buffer:
                    break
                self.state = _CONTENT
                continue
            content.append(self.buffer)
            self.buffer = ""
            break
        return "".join(thinking), "".join(content)

    def finish(self) -> tuple[str, str]:
        """What was held back, at the end of the output."""
        held, self.buffer = self.buffer, ""
        if self.state in (_OPENED, _THINKING):
            return held.rstrip(), ""
        if self.state == _LOOKING:
            return "", held
        return "", held if self.state == _CONTENT else ""


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a proper start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def parser_for(
    think: Think, config: dict[str, Any], go_template: str | None, jinja: str | None, prompt: str
) -> ThinkingParser | None:
    """The parser for one generation, or None when thinking is off (output is all content)."""
    if not think.on:
        return None
    open_tag, close_tag = tags_for(config, go_template, jinja)
    # A template that ends the prompt with the opening tag has the model start inside it (Ollama
    # checks the same).
    return ThinkingParser(open_tag, close_tag, started=prompt.rstrip().endswith(open_tag))
