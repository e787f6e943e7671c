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
the start of one.

gpt-oss models (family ``gptoss``, or ``PARSER harmony``) write OpenAI's harmony format instead:
channels, not tags (``HarmonyParser``); they always think, so their output is always parsed."""

from __future__ import annotations

import json
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

HARMONY_FAMILIES = ("gptoss", "gpt-oss")

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


def uses_harmony(config: dict[str, Any], family: str = "") -> bool:
    """Whether a model writes gpt-oss's harmony format (as Ollama decides: the parser, or the family)."""
    parser = str(config.get("parser") or "")
    return parser == "harmony" or (not parser and (family or config.get("model_family")) in HARMONY_FAMILIES)


def model_thinks(
    config: dict[str, Any], go_template: str | None, jinja_template: str | None = None, family: str = ""
) -> bool:
    listed = config.get("capabilities")
    if isinstance(listed, list) and "thinking" in listed:
        return True
    if str(config.get("parser") or "") in THINKING_PARSERS or uses_harmony(config, family):
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
        self.tool_calls: list[dict[str, Any]] = []  # none here: the content is read for them afterwards

    def restart(self, raw: str) -> str:
        """For structured output after thinking: what of the model's own text ``raw`` goes after
        the prompt when generation restarts under the grammar (through the closing tag)."""
        end = raw.find(self.close_tag)
        return raw[: end + len(self.close_tag)] if end >= 0 else ""  # none: it went straight to its answer

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


# -- harmony (gpt-oss) ----------------------------------------------------------------------------------

# Its markers are single tokens; llama.cpp writes <|start|>, <|channel|>, <|message|> and
# <|constrain|> as text and drops <|end|> (a control token); <|return|> and <|call|> end generation.
_H_START, _H_CHANNEL, _H_MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
_H_ENDS = (_H_START, _H_CHANNEL, "<|end|>", "<|return|>", "<|call|>")
_H_MARKERS = (*_H_ENDS, _H_MESSAGE, "<|constrain|>")
_H_RECIPIENT_RE = re.compile(r"to=(?:functions\.)?([^\s<]+)")
MAX_HEADER = 1024  # characters of a message header before it is taken as plain text


class HarmonyParser:
    """gpt-oss's output: messages ``<|channel|>NAME[ to=functions.TOOL][ <|constrain|>json]<|message|>BODY``,
    each ended by the next marker. The ``analysis`` channel is thinking, ``final`` (and
    ``commentary`` without a recipient) content, a body addressed to a function a tool call
    (its JSON arguments). Output that does not start with a marker is all content."""

    open_tag, close_tag = _H_CHANNEL + "analysis" + _H_MESSAGE, "<|end|>"

    def __init__(self) -> None:
        self.state = "header"  # "header", "body" or "plain"
        self.buffer = ""
        self.channel = ""
        self.recipient = ""
        self.call_body = ""
        self.tool_calls: list[dict[str, Any]] = []
        self.seen_message = False
        self.analysis_over = False

    @property
    def thinking_done(self) -> bool:
        return self.analysis_over or (self.state == "body" and self.channel != "analysis") or self.state == "plain"

    def feed(self, text: str) -> tuple[str, str]:
        self.buffer += text
        thinking: list[str] = []
        content: list[str] = []
        while self.buffer:
            if self.state == "plain":
                content.append(self.buffer)
                self.buffer = ""
            elif self.state == "header":
                head = self.buffer.lstrip()
                if (not self.seen_message and head and not head.startswith("<")) or len(self.buffer) > MAX_HEADER:
                    self.state = "plain"  # not harmony after all
                    continue
                at = self.buffer.find(_H_MESSAGE)
                if at < 0:
                    break
                header, self.buffer = self.buffer[:at], self.buffer[at + len(_H_MESSAGE) :]
                channel = header.rsplit(_H_CHANNEL, 1)[-1] if _H_CHANNEL in header else ""
                self.channel = channel.split()[0].split("<|")[0] if channel.split() else ""
                recipient = _H_RECIPIENT_RE.search(header)
                self.recipient = recipient.group(1) if recipient else ""
                self.state, self.seen_message = "body", True
            else:
                ends = [i for i in (self.buffer.find(m) for m in _H_ENDS) if i >= 0]
                cut = min(ends) if ends else len(self.buffer) - _held(self.buffer, _H_MARKERS)
                self._body(self.buffer[:cut], thinking, content)
                self.buffer = self.buffer[cut:]
                if not ends:
                    break
                self._end_message()
                for marker in ("<|end|>", "<|return|>", "<|call|>"):
                    if self.buffer.startswith(marker):
                        self.buffer = self.buffer[len(marker) :]
                self.state = "header"
        return "".join(thinking), "".join(content)

    def _body(self, text: str, thinking: list[str], content: list[str]) -> None:
        if self.recipient:
            self.call_body += text
        elif self.channel == "analysis":
            thinking.append(text)
        else:
            content.append(text)

    def _end_message(self) -> None:
        if self.channel == "analysis":
            self.analysis_over = True
        if self.recipient:
            try:
                arguments = json.loads(self.call_body or "{}")
            except ValueError:
                arguments = None
            if isinstance(arguments, dict):
                self.tool_calls.append({"function": {"name": self.recipient, "arguments": arguments}})
            self.recipient, self.call_body = "", ""

    def finish(self) -> tuple[str, str]:
        thinking: list[str] = []
        content: list[str] = []
        if self.state == "body":
            self._body(self.buffer, thinking, content)
            self._end_message()
        elif self.state == "plain" or not self.seen_message:
            content.append(self.buffer)  # text that never became a message
        self.buffer = ""  # (a header left unfinished says nothing)
        return "".join(thinking), "".join(content)

    def restart(self, raw: str) -> str:
        """Through the end of the analysis, then the start of the final message: the grammar
        then shapes only the answer's body."""
        ends = [i for i in (raw.find(m, raw.find(_H_MESSAGE) + 1) for m in _H_ENDS) if i >= 0]
        thought = raw[: min(ends)] if ends else raw
        self.state, self.channel, self.recipient, self.buffer = "body", "final", "", ""
        return thought + "<|end|>" + _H_START + "assistant" + _H_CHANNEL + "final" + _H_MESSAGE


def _held(text: str, markers: tuple[str, ...]) -> int:
    """How much of the end of ``text`` may be the start of one of ``markers``."""
    return max((_partial_suffix(text, m) for m in markers), default=0)


def parser_for(
    think: Think,
    config: dict[str, Any],
    go_template: str | None,
    jinja: str | None,
    prompt: str,
    family: str = "",
) -> ThinkingParser | HarmonyParser | None:
    """The parser for one generation, or None when thinking is off (output is all content)."""
    if uses_harmony(config, family):
        return HarmonyParser()  # gpt-oss thinks whatever it is told: its channels are always read
    if not think.on:
        return None
    open_tag, close_tag = tags_for(config, go_template, jinja)
    # A template that ends the prompt with the opening tag has the model start inside it (Ollama
    # checks the same).
    return ThinkingParser(open_tag, close_tag, started=prompt.rstrip().endswith(open_tag))
