"""A renderer for the subset of Go's ``text/template`` that Ollama prompt templates use.

Supported: text and actions with trim markers (``{{-``, ``-}}``), comments, fields (``.Role``,
``.Function.Arguments.city``), ``.``, ``$`` and variables (``$x := …``, ``$x = …``,
``range $i, $m := …``), literals (strings, raw strings, numbers, ``true``/``false``/``nil``),
pipelines with ``|``, parenthesised pipelines, ``if``/``else if``/``else``, ``range`` (lists, maps
by sorted key, integers) with ``else``/``break``/``continue``, ``with``/``else with``, and the
functions ``and or not len index slice eq ne lt le gt ge print printf println json currentDate``.

Data is plain Python: dicts for Go structs and maps. A field finds its key as spelled (``Role``),
or as Ollama's JSON names spell it (``role``, ``tool_calls`` for ``ToolCalls``); fields are looked
up in dicts only, never as Python attributes (a template comes with a model from any registry:
``.Prompt.__class__`` is an error, not a way into the interpreter).
Dicts and lists print as compact JSON, as Ollama's tool types print themselves; ``nil`` prints as
an empty string. Errors raise :class:`TemplateError` with the offending line.

A template is bounded: its source (:data:`MAX_SOURCE`), its nesting (:data:`MAX_DEPTH`), the steps
one rendering may take (:data:`MAX_STEPS`: nodes run and loop turns) and the text it may make
(:data:`MAX_OUTPUT`, also for any one value it builds); past them, :class:`TemplateError`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


class TemplateError(ValueError):
    pass


MAX_SOURCE = 256 << 10  # characters of template source (Ollama's templates are a few KiB)
MAX_DEPTH = 100  # nested blocks and parentheses
MAX_STEPS = 1_000_000  # nodes run and range turns in one rendering
MAX_OUTPUT = 8 << 20  # characters one rendering (or one value in it) may reach


# -- lexing -----------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\]|\\.)')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?))
  | (?P<declare>:=)
  | (?P<assign>=)
  | (?P<var>\$[A-Za-z_0-9]*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z_0-9]*)+)
  | (?P<dot>\.)
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<punct>[()|,])
    """,
    re.X,
)


@dataclass
class Token:
    kind: str
    value: str


def _tokens(source: str, line: int) -> list[Token]:
    out = []
    pos = 0
    while pos < len(source):
        m = _TOKEN_RE.match(source, pos)
        if m is None:
            raise TemplateError(f"line {line}: unexpected {source[pos : pos + 10]!r} in action")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind == "ws":
            continue
        value = m.group()
        # A field right after a closing paren or a variable belongs to it: `(x).Name`, `$m.Role`.
        out.append(Token(kind, value))
    return out


# -- syntax tree --------------------------------------------------------------------------------------


@dataclass
class Text:
    text: str


@dataclass
class Pipeline:
    decl: list[str]  # variables declared (:=) or assigned (=)
    assign: bool
    commands: list[list[Any]]  # each command: operands (Field, Var, Literal, Ident, Pipeline)
    line: int


@dataclass
class Field:
    names: list[str]
    base: Any = None  # None: dot; else an operand (Var, Pipeline)


@dataclass
class Var:
    name: str
    fields: list[str] = field(default_factory=list)


@dataclass
class Literal:
    value: Any


@dataclass
class Ident:
    name: str


@dataclass
class Action:
    pipe: Pipeline


@dataclass
class If:
    pipe: Pipeline
    body: list[Any]
    orelse: list[Any]
    kind: str = "if"  # or "with"


@dataclass
class Range:
    pipe: Pipeline
    body: list[Any]
    orelse: list[Any]


@dataclass
class Break:
    pass


@dataclass
class Continue:
    pass


# -- parsing ----------------------------------------------------------------------------------------


@dataclass
class _Item:
    kind: str  # "text" | "action"
    value: str
    line: int


def _action_end(source: str, start: int) -> int:
    """Index of the `}}` closing the action whose body starts at `start`, skipping quoted text
    (a raw string may hold `}}`) and comments; -1 when unclosed."""
    i = start
    while i < len(source):
        ch = source[i]
        if source.startswith("/*", i):
            close = source.find("*/", i + 2)
            if close < 0:
                return -1
            i = close + 2
        elif ch in "\"'`":
            i += 1
            while i < len(source) and source[i] != ch:
                if ch != "`" and source[i] == "\\":
                    i += 1
                elif source[i] == "\n" and ch != "`":
                    return -1
                i += 1
            i += 1
        elif source.startswith("}}", i):
            return i
        else:
            i += 1
    return -1


def _items(source: str) -> list[_Item]:
    items: list[_Item] = []
    pos = 0
    # Line numbers are counted on as the scan goes (counting from the start for every action
    # would be quadratic in a template of many actions).
    counted, lines_before = 0, 0

    def line_of(offset: int) -> int:
        nonlocal counted, lines_before
        lines_before += source.count("\n", counted, offset)
        counted = offset
        return lines_before + 1

    while True:
        start = source.find("{{", pos)
        if start < 0:
            break
        body_start = start + 2
        trim_left = (
            source.startswith("- ", body_start)
            or source.startswith("-\t", body_start)
            or source.startswith("-\n", body_start)
        )
        if trim_left:
            body_start += 2
        text_line = line_of(pos)
        end = _action_end(source, body_start)
        line = line_of(start)
        if end < 0:
            raise TemplateError(f"line {line}: unclosed action")
        body = source[body_start:end]
        trim_right = len(body) >= 2 and body[-1] == "-" and body[-2] in " \t\r\n"
        if trim_right:
            body = body[:-2]
        text = source[pos:start]
        if trim_left:
            text = text.rstrip(" \t\r\n")
        if text:
            items.append(_Item("text", text, text_line))
        items.append(_Item("action", body, line))
        pos = end + 2
        if trim_right:
            while pos < len(source) and source[pos] in " \t\r\n":
                pos += 1
    if pos < len(source):
        items.append(_Item("text", source[pos:], line_of(pos)))
    return items


class _Parser:
    def __init__(self, source: str) -> None:
        self.items = _items(source)
        self.pos = 0
        self.depth = 0

    def parse(self) -> list[Any]:
        nodes, end = self._list(())
        if end is not None:
            raise TemplateError(f"line {end[1]}: unexpected {{{{{end[0]}}}}}")
        return nodes

    def _list(self, stops: tuple[str, ...]) -> tuple[list[Any], tuple[str, int, list[Token]] | None]:
        """Nodes up to one of the ``stops`` keywords (``end``, ``else``); returns the stop met."""
        nodes: list[Any] = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if item.kind == "text":
                nodes.append(Text(item.value))
                continue
            body = item.value.strip()
            if body.startswith("/*"):
                if not body.endswith("*/"):
                    raise TemplateError(f"line {item.line}: unclosed comment")
                continue
            tokens = _tokens(body, item.line)
            if not tokens:
                raise TemplateError(f"line {item.line}: empty action")
            head = tokens[0]
            if head.kind == "ident" and head.value in ("end", "else"):
                if head.value not in stops:
                    raise TemplateError(f"line {item.line}: unexpected {{{{{head.value}}}}}")
                return nodes, (head.value, item.line, tokens[1:])
            if head.kind == "ident" and head.value in ("if", "with"):
                nodes.append(self._conditional(head.value, tokens[1:], item.line))
            elif head.kind == "ident" and head.value == "range":
                pipe = _PipeParser(tokens[1:], item.line, allow_decl=2).pipeline()
                body_nodes, orelse = self._block(item.line, "range")
                nodes.append(Range(pipe, body_nodes, orelse))
            elif head.kind == "ident" and head.value == "break":
                nodes.append(Break())
            elif head.kind == "ident" and head.value == "continue":
                nodes.append(Continue())
            elif head.kind == "ident" and head.value in ("define", "template", "block"):
                raise TemplateError(f"line {item.line}: {{{{{head.value}}}}} is not supported")
            else:
                nodes.append(Action(_PipeParser(tokens, item.line, allow_decl=1).pipeline()))
        if stops:
            raise TemplateError("unexpected end of template: missing {{end}}")
        return nodes, None

    def _conditional(self, kind: str, tokens: list[Token], line: int) -> If:
        pipe = _PipeParser(tokens, line, allow_decl=1).pipeline()
        body, orelse = self._block(line, kind)
        return If(pipe, body, orelse, kind)

    def _block(self, line: int, kind: str) -> tuple[list[Any], list[Any]]:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TemplateError(f"line {line}: blocks nested more than {MAX_DEPTH} deep")
        try:
            return self._block_body(line, kind)
        finally:
            self.depth -= 1

    def _block_body(self, line: int, kind: str) -> tuple[list[Any], list[Any]]:
        body, stop = self._list(("end", "else"))
        if stop is None:
            raise TemplateError(f"line {line}: {{{{{kind}}}}} without {{{{end}}}}")
        if stop[0] == "end":
            return body, []
        rest = stop[2]
        if rest and rest[0].kind == "ident" and rest[0].value in ("if", "with"):
            # `else if …` / `else with …`: a nested conditional that shares our {{end}}.
            return body, [self._conditional(rest[0].value, rest[1:], stop[1])]
        orelse, stop2 = self._list(("end",))
        if stop2 is None:
            raise TemplateError(f"line {line}: {{{{else}}}} without {{{{end}}}}")
        return body, orelse


class _PipeParser:
    def __init__(self, tokens: list[Token], line: int, allow_decl: int, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise TemplateError(f"line {line}: parentheses nested more than {MAX_DEPTH} deep")
        self.tokens = tokens
        self.pos = 0
        self.line = line
        self.allow_decl = allow_decl
        self.depth = depth

    def _peek(self, offset: int = 0) -> Token | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def pipeline(self, until_paren: bool = False) -> Pipeline:
        decl: list[str] = []
        assign = False
        # `$x :=`, `$i, $v :=`, `$x =`
        if self.allow_decl and self._peek() and self._peek().kind == "var":  # type: ignore[union-attr]
            names = [self.tokens[self.pos].value]
            offset = 1
            if self.allow_decl == 2 and self._peek(1) and self._peek(1).value == "," and self._peek(2):  # type: ignore[union-attr]
                names.append(self.tokens[self.pos + 2].value)
                offset = 3
            op = self._peek(offset)
            if op is not None and op.kind in ("declare", "assign"):
                decl, assign = names, op.kind == "assign"
                self.pos += offset + 1
        commands: list[list[Any]] = []
        operands: list[Any] = []
        after_pipe = False
        while True:
            token = self._peek()
            if token is None or (until_paren and token.value == ")"):
                if after_pipe:
                    raise TemplateError(f"line {self.line}: missing command after |")
                break
            self.pos += 1
            after_pipe = token.value == "|"
            if token.value == "|":
                if not operands:
                    raise TemplateError(f"line {self.line}: missing command before |")
                commands.append(operands)
                operands = []
            elif token.value == "(":
                inner = _PipeParser(self.tokens, self.line, 0, self.depth + 1)
                inner.pos = self.pos
                sub = inner.pipeline(until_paren=True)
                self.pos = inner.pos
                closing = self._peek()
                if closing is None or closing.value != ")":
                    raise TemplateError(f"line {self.line}: unclosed (")
                self.pos += 1
                operands.append(self._with_fields(sub))
            elif token.value == ")":
                raise TemplateError(f"line {self.line}: unexpected )")
            else:
                operands.append(self._operand(token))
        if operands:
            commands.append(operands)
        if not commands:
            raise TemplateError(f"line {self.line}: missing value")
        return Pipeline(decl, assign, commands, self.line)

    def _with_fields(self, base: Any) -> Any:
        token = self._peek()
        if token is not None and token.kind == "field":
            self.pos += 1
            return Field(token.value.split(".")[1:], base)
        return base

    def _operand(self, token: Token) -> Any:
        kind, value = token.kind, token.value
        if kind == "field":
            return Field(value.split(".")[1:])
        if kind == "dot":
            return Field([])
        if kind == "var":
            return self._with_fields(Var(value))
        if kind == "string":
            return Literal(_unquote(value, self.line))
        if kind == "raw":
            return Literal(value[1:-1])
        if kind == "char":
            return Literal(ord(_unquote('"' + value[1:-1] + '"', self.line)))
        if kind == "number":
            return Literal(_number(value))
        if kind == "ident":
            if value in ("true", "false"):
                return Literal(value == "true")
            if value == "nil":
                return Literal(None)
            return Ident(value)
        raise TemplateError(f"line {self.line}: unexpected {value!r}")


def _unquote(text: str, line: int) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = text[1:-1].encode().decode("unicode_escape")
        except UnicodeDecodeError:
            raise TemplateError(f"line {line}: bad string {text}") from None
    return str(value)


def _number(text: str) -> int | float:
    try:
        return int(text, 0)
    except ValueError:
        return float(text)


# -- evaluation --------------------------------------------------------------------------------------


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


def go_json(value: Any) -> str:
    """Go's json.Marshal: compact, with <, > and & escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if not value.is_integer() or abs(value) >= 1e21 else str(int(value))
    if isinstance(value, (dict, list, tuple)):
        return go_json(value)
    return str(value)


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, (list, tuple, str)):
            if not isinstance(key, int) or not -len(value) <= key < len(value) or key < 0:
                raise TemplateError(f"index {key} out of range")
            value = value[key]
        elif value is None:
            raise TemplateError("index of nil")
        else:
            raise TemplateError(f"cannot index {type(value).__name__}")
    return value


def _slice(value: Any, *bounds: int) -> Any:
    if not isinstance(value, (list, tuple, str)):
        raise TemplateError(f"cannot slice {type(value).__name__}")
    start = bounds[0] if bounds else 0
    stop = bounds[1] if len(bounds) > 1 else len(value)
    if not 0 <= start <= stop <= len(value):
        raise TemplateError(f"slice [{start}:{stop}] out of range")
    return value[start:stop]


def _compare(op: str) -> Callable[..., bool]:
    def compare(a: Any, b: Any) -> bool:
        try:
            return bool({"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op])
        except TypeError:
            raise TemplateError(f"incompatible types for comparison: {type(a).__name__}, {type(b).__name__}") from None

    return compare


def _printf(fmt: str, *args: Any) -> str:
    out: list[str] = []
    values = iter(args)
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%" or i + 1 >= len(fmt):
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        value = next(values, None)
        if verb == "q":
            out.append(json.dumps(to_text(value), ensure_ascii=False))
        elif verb == "d":
            out.append(str(int(value or 0)))
        else:
            out.append(to_text(value))
    return "".join(out)


def _print(*args: Any) -> str:
    # Go's Sprint puts spaces between operands when neither side is a string.
    out = ""
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out += " "
        out += to_text(a)
    return out


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "not": lambda v: not truthy(v),
    "len": lambda v: len(v) if v is not None else 0,
    "index": _index,
    "slice": _slice,
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": _compare("lt"),
    "le": _compare("le"),
    "gt": _compare("gt"),
    "ge": _compare("ge"),
    "print": _print,
    "printf": _printf,
    "println": lambda *a: " ".join(to_text(x) for x in a) + "\n",
    "json": go_json,
    "currentDate": lambda: dt.date.today().isoformat(),
}


class _Scope:
    """Variables, and what is left of the rendering's budget."""

    def __init__(self, root: Any, max_steps: int, max_output: int) -> None:
        self.frames: list[dict[str, Any]] = [{"$": root}]
        self.steps_left = max_steps
        self.output_left = max_output
        self.max_output = max_output

    def step(self, n: int = 1) -> None:
        self.steps_left -= n
        if self.steps_left < 0:
            raise TemplateError("the template takes too many steps (a loop that does not end soon enough)")

    def emit(self, out: list[str], text: str) -> None:
        self.output_left -= len(text)
        if self.output_left < 0:
            raise TemplateError(f"the template's output exceeds {self.max_output} characters")
        out.append(text)

    def lookup(self, name: str, line: int) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise TemplateError(f"line {line}: undefined variable {name}")

    def set(self, name: str, value: Any, line: int) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise TemplateError(f"line {line}: undefined variable {name}")


class Template:
    """A parsed template; ``render(data)`` gives the text."""

    def __init__(self, source: str) -> None:
        if len(source) > MAX_SOURCE:
            raise TemplateError(f"template of {len(source)} characters (at most {MAX_SOURCE})")
        self.source = source
        try:
            self.nodes = _Parser(source).parse()
        except RecursionError:
            raise TemplateError("template nested too deeply") from None

    def render(self, data: Any, max_steps: int = MAX_STEPS, max_output: int = MAX_OUTPUT) -> str:
        """The text; :class:`TemplateError` past ``max_steps`` steps or ``max_output`` characters."""
        out: list[str] = []
        scope = _Scope(data, max_steps, max_output)
        try:
            self._run(self.nodes, data, scope, out)
        except (_Break, _Continue):
            raise TemplateError("break or continue outside range") from None
        except RecursionError:
            raise TemplateError("template nested too deeply") from None
        return "".join(out)

    def uses(self, name: str) -> bool:
        """Whether the template mentions the field ``name`` anywhere (as Ollama checks for .Messages)."""
        return any(name in names for names in self._fields(self.nodes))

    def _fields(self, nodes: list[Any]) -> Iterator[list[str]]:
        for node in nodes:
            if isinstance(node, Action):
                yield from self._pipe_fields(node.pipe)
            elif isinstance(node, (If, Range)):
                yield from self._pipe_fields(node.pipe)
                yield from self._fields(node.body)
                yield from self._fields(node.orelse)

    def _pipe_fields(self, pipe: Pipeline) -> Iterator[list[str]]:
        for command in pipe.commands:
            for operand in command:
                if isinstance(operand, Field):
                    yield operand.names
                    if isinstance(operand.base, Pipeline):
                        yield from self._pipe_fields(operand.base)
                elif isinstance(operand, Pipeline):
                    yield from self._pipe_fields(operand)

    # -- running -------------------------------------------------------------------------------------

    def _run(self, nodes: list[Any], dot: Any, scope: _Scope, out: list[str]) -> None:
        for node in nodes:
            scope.step()
            if isinstance(node, Text):
                scope.emit(out, node.text)
            elif isinstance(node, Action):
                value = self._pipeline(node.pipe, dot, scope)
                if not node.pipe.decl:
                    scope.emit(out, to_text(value))
            elif isinstance(node, If):
                scope.frames.append({})
                try:
                    value = self._pipeline(node.pipe, dot, scope)
                    if truthy(value):
                        self._run(node.body, value if node.kind == "with" else dot, scope, out)
                    else:
                        self._run(node.orelse, dot, scope, out)
                finally:
                    scope.frames.pop()
            elif isinstance(node, Range):
                self._range(node, dot, scope, out)
            elif isinstance(node, Break):
                raise _Break()
            elif isinstance(node, Continue):
                raise _Continue()

    def _range(self, node: Range, dot: Any, scope: _Scope, out: list[str]) -> None:
        scope.frames.append({})
        try:
            pipe = node.pipe
            collection = self._eval_commands(pipe, dot, scope)
            pairs: Iterator[tuple[Any, Any]]
            if isinstance(collection, dict):
                scope.step(len(collection))  # sorting costs what the turns would
                pairs = iter([(k, collection[k]) for k in sorted(collection)])
            elif isinstance(collection, (list, tuple, str)):
                pairs = enumerate(collection)
            elif isinstance(collection, int) and not isinstance(collection, bool):
                if collection > scope.steps_left:  # refused before the first turn
                    raise TemplateError(f"line {pipe.line}: range {collection} takes too many steps")
                pairs = ((i, i) for i in range(collection))
            elif collection is None:
                pairs = iter(())
            else:
                raise TemplateError(f"line {pipe.line}: range can't iterate over {type(collection).__name__}")
            if not collection or (isinstance(collection, int) and collection < 0):
                self._run(node.orelse, dot, scope, out)
                return
            for key, value in pairs:
                scope.step()
                frame = scope.frames[-1]
                if len(pipe.decl) == 1:
                    frame[pipe.decl[0]] = value
                elif len(pipe.decl) == 2:
                    frame[pipe.decl[0]], frame[pipe.decl[1]] = key, value
                try:
                    self._run(node.body, value, scope, out)
                except _Continue:
                    continue
                except _Break:
                    break
        finally:
            scope.frames.pop()

    def _pipeline(self, pipe: Pipeline, dot: Any, scope: _Scope) -> Any:
        value = self._eval_commands(pipe, dot, scope)
        if pipe.decl:
            if pipe.assign:
                scope.set(pipe.decl[0], value, pipe.line)
            else:
                scope.frames[-1][pipe.decl[0]] = value
        return value

    def _eval_commands(self, pipe: Pipeline, dot: Any, scope: _Scope) -> Any:
        value: Any = None
        for i, command in enumerate(pipe.commands):
            extra = [value] if i > 0 else []
            value = self._command(command, extra, dot, scope, pipe.line)
        return value

    def _command(self, operands: list[Any], extra: list[Any], dot: Any, scope: _Scope, line: int) -> Any:
        head = operands[0]
        if isinstance(head, Ident):
            name = head.name
            if name in ("and", "or"):
                args = operands[1:]
                result: Any = None
                for arg in args:
                    result = self._operand(arg, dot, scope, line)
                    if truthy(result) == (name == "or"):
                        return result
                if extra:
                    result = extra[0]
                return result
            fn = FUNCTIONS.get(name)
            if fn is None:
                raise TemplateError(f'line {line}: function "{name}" not defined')
            args = [self._operand(a, dot, scope, line) for a in operands[1:]] + extra
            try:
                result = fn(*args)
                if isinstance(result, str) and len(result) > scope.max_output:
                    raise TemplateError(f"a value of more than {scope.max_output} characters")
                return result
            except TemplateError as e:
                raise TemplateError(f"line {line}: {name}: {e}") from None
            except TypeError as e:
                raise TemplateError(f"line {line}: wrong arguments for {name}: {e}") from None
        if len(operands) > 1 or extra:
            raise TemplateError(f"line {line}: can't give arguments to a non-function")
        return self._operand(head, dot, scope, line)

    def _operand(self, operand: Any, dot: Any, scope: _Scope, line: int) -> Any:
        if isinstance(operand, Literal):
            return operand.value
        if isinstance(operand, Field):
            base = dot if operand.base is None else self._operand(operand.base, dot, scope, line)
            return _fields(base, operand.names)
        if isinstance(operand, Var):
            return _fields(scope.lookup(operand.name, line), operand.fields)
        if isinstance(operand, Pipeline):
            return self._eval_commands(operand, dot, scope)
        if isinstance(operand, Ident):
            return self._command([operand], [], dot, scope, line)
        raise TemplateError(f"line {line}: bad operand")


def _fields(value: Any, names: list[str]) -> Any:
    """``.A.B`` on the data: dict keys only (as Go finds a struct's fields and a map's keys),
    never an attribute of a Python object."""
    for name in names:
        if isinstance(value, dict):
            value = _lookup(value, name)
        elif value is None:
            return None
        else:
            raise TemplateError(f"can't evaluate field {name} in type {_go_type(value)}")
    return value


def _go_type(value: Any) -> str:
    names = {str: "string", bool: "bool", int: "int", float: "float64", list: "[]interface {}"}
    return names.get(type(value), "interface {}")


_CAMEL_RE = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _lookup(mapping: dict[str, Any], name: str) -> Any:
    """A Go field name against JSON-style data: ``Role`` finds ``role``, ``ToolCalls`` finds
    ``tool_calls`` (Ollama's structs carry those JSON names); map keys match exactly first."""
    if name in mapping:
        return mapping[name]
    lower = name[:1].lower() + name[1:]
    if lower in mapping:
        return mapping[lower]
    snake = _CAMEL_RE.sub(r"_\1", name).lower()
    return mapping.get(snake)
