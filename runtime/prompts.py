"""Turning requests into prompt text, and model output back into tool calls.

The template is, in order: the request's ``template``; the model's TEMPLATE layer (Go
``text/template``, as ollama.com models ship them, rendered by ``formats.gotemplate``); the GGUF's
``tokenizer.chat_template`` (Jinja, sandboxed); else ``{{ .Prompt }}``. As in Ollama, a Go template
that uses ``.Messages`` gets the whole conversation at once, an older one is rendered turn by turn
with ``.System``/``.Prompt``/``.Response`` (the text after ``.Response`` dropped for the turn being
generated). The model's SYSTEM layer applies unless the conversation brings its own; its MESSAGE
layer comes first.

Templates come with models from any registry, so rendering is bounded: Go templates by
``formats.gotemplate``'s step and output budgets, Jinja ones by the sandbox plus the same budgets
(attribute lookups, calls and ``range`` items count as steps; ``*``/``**``/``+`` may not build
huge values). The budgets grow with the conversation. Callers render in a worker thread."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from formats.gotemplate import MAX_OUTPUT, MAX_STEPS, Template, TemplateError
from formats.thinking import Think

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
        self.go = go_template(go_source) if go_source is not None else None
        self.jinja = None
        self.max_steps, self.max_output = MAX_STEPS, MAX_OUTPUT
        if self.go is None and jinja_source:
            from jinja2.exceptions import TemplateError as JinjaError

            if len(jinja_source) > MAX_JINJA_SOURCE:
                raise TemplateError(f"chat template of {len(jinja_source)} characters (at most {MAX_JINJA_SOURCE})")
            env = _bounded_sandbox()
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

    def render(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        suffix: str = "",
        think: Think | None = None,
    ) -> str:
        # A long conversation may take more steps and make more text than the fixed budgets allow.
        size = sum(len(m.content) for m in messages) + len(suffix) + len(json.dumps(tools or []))
        self.max_steps = MAX_STEPS + 64 * (len(messages) + len(tools or []))
        self.max_output = MAX_OUTPUT + 4 * size
        think = think or Think()
        if self.jinja is not None:
            return self._render_jinja(messages, tools, think)
        assert self.go is not None
        system, turns = collate(messages)
        thinking = think.template_values()  # .Think, .ThinkLevel, .IsThinkSet
        try:
            if suffix:
                prompt = turns[-1].content if turns and turns[-1].role == "user" else ""
                return self._go({"Prompt": prompt, "Suffix": suffix, "Response": "", **thinking})
            if self.go.uses("Messages"):
                data = {
                    "System": system,
                    "Messages": [m.to_template() for m in turns],
                    "Tools": tools or [],
                    "Response": "",
                    "Prompt": "",
                    "Suffix": "",
                    **thinking,
                }
                return self._go(data)
            return self._render_legacy(turns, thinking)
        except TemplateError:
            raise
        except (TypeError, ValueError, KeyError) as e:
            raise TemplateError(str(e)) from None

    def _go(self, data: dict[str, Any]) -> str:
        assert self.go is not None
        return self.go.render(data, self.max_steps, self.max_output)

    def _render_legacy(self, turns: list[Message], thinking: dict[str, Any]) -> str:
        """Turn by turn, as Ollama does for templates without .Messages."""
        assert self.go is not None
        out: list[str] = []
        values: dict[str, Any] = {"System": "", "Prompt": "", "Response": "", **thinking}

        def flush() -> None:
            out.append(self._go(values))
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
        text = self._go(values)
        out.append(text.split(RESPONSE_MARK, 1)[0])
        return "".join(out)

    def _render_jinja(self, messages: list[Message], tools: list[dict[str, Any]] | None, think: Think) -> str:
        from jinja2.exceptions import TemplateError as JinjaError

        assert self.jinja is not None
        data = [m.to_template() for m in messages]
        for m in data:  # HF templates expect arguments as objects and tool calls typed
            for call in m.get("tool_calls", []):
                call.setdefault("type", "function")
            if m.get("thinking"):  # Hugging Face's name for it (Qwen3, DeepSeek-R1 templates)
                m["reasoning_content"] = m["thinking"]
        # What Hugging Face thinking templates read: Qwen3's enable_thinking, gpt-oss's reasoning_effort.
        extra: dict[str, Any] = {"enable_thinking": think.on} if think.explicit else {}
        if think.level:
            extra["reasoning_effort"] = think.level
        env: Any = self.jinja.environment
        env.budget.steps_left, env.budget.max_output = self.max_steps, self.max_output
        out: list[str] = []
        left = self.max_output
        try:
            for piece in self.jinja.generate(
                messages=data,
                tools=tools or None,
                add_generation_prompt=True,
                bos_token=self.bos,
                eos_token=self.eos,
                **extra,
            ):
                env.step()
                left -= len(piece)
                if left < 0:
                    raise TemplateError(f"chat template: output exceeds {self.max_output} characters")
                out.append(piece)
        except TemplateError:
            raise
        except JinjaError as e:
            raise TemplateError(f"chat template: {e}") from None
        except Exception as e:  # the template's own Python errors (a model's file): a 400, not a 500
            raise TemplateError(f"chat template: {type(e).__name__}: {e}") from None
        return "".join(out)


def _raise(message: str) -> None:
    raise TemplateError(message)


MAX_JINJA_SOURCE = 256 << 10  # characters (Hugging Face chat templates are tens of KiB at most)

# Parsed Go templates by source: a model's template is parsed once, not on every request. Kept
# while their sources total at most _PARSED_BUDGET characters (a parsed template is ~100× its
# source); failures are remembered too.
_PARSED: OrderedDict[str, Template | TemplateError] = OrderedDict()
_PARSED_BUDGET = 512 << 10
_parsed_lock = threading.Lock()


def go_template(source: str) -> Template:
    with _parsed_lock:
        found = _PARSED.get(source)
        if found is not None:
            _PARSED.move_to_end(source)
    if found is None:
        try:
            found = Template(source)
        except TemplateError as e:
            found = e
        with _parsed_lock:
            _PARSED[source] = found
            while sum(len(k) for k in _PARSED) > _PARSED_BUDGET and len(_PARSED) > 1:
                _PARSED.popitem(last=False)
    if isinstance(found, TemplateError):
        raise TemplateError(str(found))
    return found


_sandbox_class: Any = None


def _bounded_sandbox() -> Any:
    global _sandbox_class
    if _sandbox_class is None:  # built on first use: jinja2 is imported only for Jinja templates
        _sandbox_class = _make_bounded_sandbox()
    return _sandbox_class(trim_blocks=True, lstrip_blocks=True)


def _make_bounded_sandbox() -> type:
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """Jinja's immutable sandbox with a step budget (each attribute or item lookup, call and
        ``range`` item is a step) and no arithmetic that builds huge values."""

        intercepted_binops = frozenset({"*", "**", "+"})

        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.budget = threading.local()
            self.globals["range"] = self._range

        def step(self, n: int = 1) -> None:
            left = getattr(self.budget, "steps_left", MAX_STEPS) - n
            self.budget.steps_left = left
            if left < 0:
                raise TemplateError("chat template: too many steps (a loop that does not end soon enough)")

        def _range(self, *args: int) -> range:
            r = range(*args)
            self.step(len(r))
            return r

        def getattr(self, obj: Any, attribute: str) -> Any:
            self.step()
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            self.step()
            return super().getitem(obj, argument)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            __self.step()
            return super().call(__context, __obj, *args, **kwargs)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            self.step()
            limit = getattr(self.budget, "max_output", MAX_OUTPUT)
            powers = operator == "**" and isinstance(left, int) and isinstance(right, int)
            if powers and right * max(abs(left).bit_length(), 1) > 1 << 16:  # the result's bits
                raise SecurityError("chat template: number too large")
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > limit:
                        raise SecurityError("chat template: value too large")
            sized = isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple))
            if operator == "+" and sized and len(left) + len(right) > limit:
                raise SecurityError("chat template: value too large")
            return super().call_binop(context, operator, left, right)

    return BoundedSandbox


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
