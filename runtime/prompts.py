"""Turning requests into prompt text, and model output back into tool calls.

The template is, in order: the request's ``template``; the model's TEMPLATE layer (Go
``text/template``, as ollama.com models ship them, rendered by ``runtime.gotemplate``); the GGUF's
``tokenizer.chat_template`` (Jinja, sandboxed); else ``{{ .Prompt }}``. As in Ollama, a Go template
that uses ``.Messages`` gets the whole conversation at once, an older one is rendered turn by turn
with ``.System``/``.Prompt``/``.Response`` (the text after ``.Response`` dropped for the turn being
generated). The model's SYSTEM layer applies unless the conversation brings its own; its MESSAGE
layer comes first."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from runtime.gotemplate import Template, TemplateError

RESPONSE_MARK = "\x00hangar-response\x00"


@dataclass
class Message:
    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    thinking: str | None = None

    def to_template(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_name:
            out["tool_name"] = self.tool_name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.thinking:
            out["thinking"] = self.thinking
        return out


class PromptTemplate:
    """One model's way of writing prompts."""

    def __init__(self, go_source: str | None, jinja_source: str | None, bos: str = "", eos: str = "") -> None:
        self.go = Template(go_source) if go_source is not None else None
        self.jinja = None
        if self.go is None and jinja_source:
            from jinja2.exceptions import TemplateError as JinjaError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: dt.datetime.now().strftime(fmt)
            try:
                self.jinja = env.from_string(jinja_source)
            except JinjaError as e:
                raise TemplateError(f"chat template: {e}") from None
        if self.go is None and self.jinja is None:
            self.go = Template("{{ .Prompt }}")
        self.bos, self.eos = bos, eos

    @property
    def uses_messages(self) -> bool:
        return self.jinja is not None or (self.go is not None and self.go.uses("Messages"))

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, suffix: str = "") -> str:
        if self.jinja is not None:
            return self._render_jinja(messages, tools)
        assert self.go is not None
        system, turns = collate(messages)
        try:
            if suffix:
                prompt = turns[-1].content if turns and turns[-1].role == "user" else ""
                return self.go.render({"Prompt": prompt, "Suffix": suffix, "Response": ""})
            if self.go.uses("Messages"):
                data = {
                    "System": system,
                    "Messages": [m.to_template() for m in turns],
                    "Tools": tools or [],
                    "Response": "",
                    "Prompt": "",
                    "Suffix": "",
                }
                return self.go.render(data)
            return self._render_legacy(turns)
        except TemplateError:
            raise
        except (TypeError, ValueError, KeyError) as e:
            raise TemplateError(str(e)) from None

    def _render_legacy(self, turns: list[Message]) -> str:
        """Turn by turn, as Ollama does for templates without .Messages."""
        assert self.go is not None
        out: list[str] = []
        values = {"System": "", "Prompt": "", "Response": ""}

        def flush() -> None:
            out.append(self.go.render(values))  # type: ignore[union-attr]
            values.update(System="", Prompt="", Response="")

        for m in turns:
            if m.role == "system":
                if values["Prompt"] or values["Response"]:
                    flush()
                values["System"] = m.content
            elif m.role == "user":
                if values["Response"]:
                    flush()
                values["Prompt"] = m.content
            elif m.role == "assistant":
                values["Response"] = m.content
        # The turn being generated: cut at .Response.
        values["Response"] = RESPONSE_MARK
        text = self.go.render(values)
        out.append(text.split(RESPONSE_MARK, 1)[0])
        return "".join(out)

    def _render_jinja(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> str:
        from jinja2.exceptions import TemplateError as JinjaError

        assert self.jinja is not None
        data = [m.to_template() for m in messages]
        for m in data:  # HF templates expect arguments as objects and tool calls typed
            for call in m.get("tool_calls", []):
                call.setdefault("type", "function")
        try:
            return str(
                self.jinja.render(
                    messages=data,
                    tools=tools or None,
                    add_generation_prompt=True,
                    bos_token=self.bos,
                    eos_token=self.eos,
                )
            )
        except JinjaError as e:
            raise TemplateError(f"chat template: {e}") from None


def _raise(message: str) -> None:
    raise TemplateError(message)


def collate(messages: list[Message]) -> tuple[str, list[Message]]:
    """All system messages joined (Ollama's ``.System``), and consecutive same-role messages
    merged."""
    system: list[str] = []
    out: list[Message] = []
    for m in messages:
        if m.role == "system":
            system.append(m.content)
        if out and out[-1].role == m.role and m.role in ("system", "user") and not m.images and not out[-1].images:
            out[-1] = Message(m.role, out[-1].content + "\n\n" + m.content)
        else:
            out.append(m)
    return "\n\n".join(system), out


# -- tool calls ----------------------------------------------------------------------------------------

_TAGS_RE = re.compile(r"</?tool_call>|\[TOOL_CALLS\]|<\|python_tag\|>|```(?:json)?")


def looks_like_tool_call(text: str) -> bool:
    """Whether streamed output may be a tool call (so it should be held back until it ends)."""
    head = text.lstrip()
    return head[:1] in ("{", "[") or head.startswith(("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "```"))


def parse_tool_calls(text: str, tool_names: set[str]) -> tuple[list[dict[str, Any]], str]:
    """Tool calls the model wrote (JSON objects with a known ``name`` and ``arguments`` or
    ``parameters``, alone, in a list, or inside tool-call tags), and the text left around them."""
    calls: list[dict[str, Any]] = []
    spans: list[tuple[int, int]] = []
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(text):
        start = min((i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0), default=-1)
        if start < 0:
            break
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        found = [c for c in (_as_call(v, tool_names) for v in (value if isinstance(value, list) else [value])) if c]
        if found:
            calls.extend(found)
            spans.append((start, end))
        pos = end if found else start + 1
    if not calls:
        return [], text
    rest, last = [], 0
    for start, end in spans:
        rest.append(text[last:start])
        last = end
    rest.append(text[last:])
    return calls, _TAGS_RE.sub("", "".join(rest)).strip()


def _as_call(value: Any, tool_names: set[str]) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):
        value = value["function"]
    name = value.get("name")
    args = value.get("arguments", value.get("parameters", {}))
    if not isinstance(name, str) or (tool_names and name not in tool_names):
        return None
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {"function": {"name": name, "arguments": args}}
