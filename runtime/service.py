"""What both APIs do, once: find a model, build its prompt, run it on a scheduled engine, and
report what happened. ``runtime.api.ollama`` and ``runtime.api.openai`` only translate JSON.

A model's files and template came from a registry: reading them (``info``) and rendering prompts
(``chat_prompt``, ``generate_prompt``) run in worker threads, within bounds, so a hostile model
never stalls the event loop; a model that cannot be read is listed with its error and refused for
running."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from client.config import ClientSettings
from client.errors import InvalidName, ModelNotFound
from client.model_info import ModelInfo, inspect
from client.store import LocalModel, Store
from formats.gotemplate import TemplateError
from formats.names import ModelName
from formats.options import DEFAULTS
from formats.thinking import HarmonyParser, Think, ThinkError, ThinkingParser, parser_for, request_think
from runtime.config import RuntimeSettings
from runtime.engine import GenerationEngine, LoadSpec, vocab_for
from runtime.generation import BadInput, DoneEvent, EngineError, MediaPrompt, Sampling, TokenEvent
from runtime.prompts import Message, PromptTemplate, looks_like_tool_call, parse_tool_calls
from runtime.scheduler import Runner, Scheduler


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Resolved:
    requested: str
    name: ModelName
    model: LocalModel
    info: ModelInfo

    @property
    def key(self) -> str:
        return str(self.name)


@dataclass
class Result:
    """What a generation produced, filled in as it streams."""

    text: str = ""
    thinking: str = ""  # what a thinking model thought (formats.thinking), apart from ``text``
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    done: DoneEvent | None = None
    load_ns: int = 0
    total_ns: int = 0
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Piece:
    """A streamed fragment of output."""

    text: str
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    thinking: str = ""


async def collect(items: AsyncIterator[Piece | Result]) -> Result:
    """The Result of a generation that is not streamed."""
    result = Result()
    async for item in items:
        if isinstance(item, Result):
            result = item
    return result


class Service:
    def __init__(self, settings: RuntimeSettings, client_settings: ClientSettings, scheduler: Scheduler) -> None:
        self.settings = settings
        self.client_settings = client_settings
        self.store = Store(client_settings.models)
        self.scheduler = scheduler
        self._info: dict[tuple[str, str], ModelInfo] = {}

    # -- models ------------------------------------------------------------------------------------

    async def resolve(self, text: Any, *, missing: str = 'model "{name}" not found, try pulling it first') -> Resolved:
        if not isinstance(text, str) or not text:
            raise ApiError(400, "model is required")
        try:
            name = self.store.parse_name(text, self.client_settings.default_host)
        except InvalidName:
            raise ApiError(400, "invalid model name") from None
        try:
            model = self.store.get(name)
        except ModelNotFound:
            raise ApiError(404, missing.format(name=text)) from None
        return Resolved(text, name, model, await self.info_async(model))

    def info(self, model: LocalModel) -> ModelInfo:
        """What the model's files say, read once per version; blocking (see ``info_async``)."""
        key = (str(model.name), model.id)
        cached = self._info.get(key)
        if cached is None:
            try:
                cached = inspect(self.store, model)
            except Exception as e:  # one unreadable model must not break the listing of the others
                logging.getLogger("hangar.runtime").warning("cannot read model %s: %s", model.name, e)
                cached = ModelInfo(model=model, error=f"unreadable: {e}")
            self._info[key] = cached
        return cached

    async def info_async(self, model: LocalModel) -> ModelInfo:
        cached = self._info.get((str(model.name), model.id))
        return cached if cached is not None else await anyio.to_thread.run_sync(self.info, model)

    def template_for(self, resolved: Resolved, override: str | None = None) -> PromptTemplate:
        info = resolved.info
        try:
            if override is not None:
                return PromptTemplate(override, None)
            jinja = info.gguf.get("tokenizer.chat_template") if info.template is None else None
            bos, eos = _special_tokens(info)
            return PromptTemplate(info.template, jinja if isinstance(jinja, str) else None, bos, eos)
        except TemplateError as e:
            raise ApiError(400, f"template error: {e}") from None

    def options(self, resolved: Resolved, request_options: dict[str, Any]) -> dict[str, Any]:
        """Built-in defaults < the model's parameters < the request's. The default context is
        capped at what the model was trained for."""
        trained = resolved.info.arch_value("context_length")
        default_ctx = self.settings.context_length
        if isinstance(trained, int) and 0 < trained < default_ctx:
            default_ctx = trained
        merged = {**DEFAULTS, "num_ctx": default_ctx}
        merged.update({k: v for k, v in resolved.info.parameters.items() if v is not None})
        merged.update(request_options)
        return merged

    def spec(self, resolved: Resolved, options: dict[str, Any], *, embedding: bool) -> LoadSpec:
        if resolved.info.error:  # never hand llama.cpp a file we could not read ourselves
            raise ApiError(500, f'model "{resolved.requested}" cannot be loaded: {resolved.info.error}')
        for layer in resolved.model.manifest.layers:  # a --link'ed file edited since the model was read
            if changed := self.store.linked_change(layer.digest):
                raise ApiError(500, f'model "{resolved.requested}" cannot be loaded: {changed}')
        if resolved.info.model_path is None:
            raise ApiError(400, f'"{resolved.requested}" has no model weights to load')
        files = [resolved.info.model_path, *resolved.info.adapters, *resolved.info.projectors]
        missing = [p.name for p in files if not p.exists()]
        if missing:  # removed by hand, or found damaged after a crash (see client.store)
            raise ApiError(
                404, f'model "{resolved.requested}" is incomplete ({", ".join(missing)} missing), try pulling it again'
            )
        return LoadSpec(
            model_path=str(resolved.info.model_path),
            adapters=tuple(str(p) for p in resolved.info.adapters),
            num_ctx=max(4, int(options.get("num_ctx") or self.settings.context_length)),
            num_batch=int(options.get("num_batch", DEFAULTS["num_batch"])),
            num_gpu=int(options.get("num_gpu", DEFAULTS["num_gpu"])),
            num_thread=int(options.get("num_thread", DEFAULTS["num_thread"])),
            use_mmap=bool(options.get("use_mmap", True)),
            embedding=embedding,
            projector=str(resolved.info.projectors[0]) if resolved.info.projectors else None,
        )

    # -- running -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def runner(
        self, resolved: Resolved, spec: LoadSpec, keep_alive: float | None
    ) -> AsyncIterator[tuple[Runner, int]]:
        """A loaded runner, and the nanoseconds spent loading it for this request (0 if it was loaded)."""
        before = self.scheduler.runners.get(resolved.key)
        try:
            async with self.scheduler.use(resolved.key, spec, keep_alive) as runner:
                loaded_now = runner is not before
                yield runner, (runner.engine.load_ns if loaded_now else 0)
        except BadInput as e:
            raise ApiError(400, str(e)) from None
        except EngineError as e:
            raise ApiError(500, str(e)) from None

    async def load_only(
        self, resolved: Resolved, options: dict[str, Any], keep_alive: float | None, embedding: bool = False
    ) -> str:
        """Load (or, with keep_alive 0, unload) without generating: the ``done_reason``."""
        if keep_alive == 0:
            await self.scheduler.unload(resolved.key)
            return "unload"
        async with self.runner(resolved, self.spec(resolved, options, embedding=embedding), keep_alive):
            pass
        return "load"

    async def complete(
        self,
        resolved: Resolved,
        prompt: str,
        options: dict[str, Any],
        *,
        keep_alive: float | None,
        grammar: str | None = None,
        context: list[int] | None = None,
        tools: list[dict[str, Any]] | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        images: list[bytes] | None = None,
        cancel: threading.Event | None = None,
        think: Think | None = None,
        truncate: bool = True,
        shift: bool = True,
    ) -> AsyncGenerator[Piece | Result, None]:
        """Stream the model's answer to ``prompt`` as Pieces; the last item is the Result.

        ``images`` belong at the image markers in ``prompt`` (see ``with_image_markers``). With
        ``tools``, output that looks like a tool call is held back and parsed at the end. With
        ``think`` on, the output is split into thinking and content (``formats.thinking``); a
        ``grammar`` then applies only after the thinking (§8.4): the model thinks unconstrained
        until its closing tag, and generation restarts from there with the grammar."""
        if images and context:
            raise ApiError(400, "context cannot be combined with images")
        start = time.perf_counter_ns()
        cancel = cancel or threading.Event()
        parser = self.thinking_parser(resolved, think, prompt)
        deferred = grammar if parser is not None else None  # the grammar waits for the thinking to end
        sampling = sampling_from(options, None if deferred else grammar, logprobs, top_logprobs)
        # §8.3: a prompt longer than the context is cut (else a 400), a reply that fills the
        # context shifts it (else it ends with "length"); see runtime.batch.
        sampling.truncate, sampling.shift = truncate, shift
        sampling.fail_after = self.settings.test_fail_after  # tests only: HANGAR_TEST_FAIL_AFTER
        result = Result()
        tool_names = {t.get("function", {}).get("name") for t in tools or [] if isinstance(t, dict)}
        held = ""
        async with self.runner(resolved, self.spec(resolved, options, embedding=False), keep_alive) as (
            runner,
            load_ns,
        ):
            result.load_ns = load_ns
            engine = runner.engine

            async def request_for(text: str) -> list[int] | MediaPrompt:
                if images:
                    bos = _special_tokens(resolved.info)[0]
                    # mtmd adds the BOS token itself; a template that writes it would make two.
                    return MediaPrompt(text[len(bos) :] if bos and text.startswith(bos) else text, images)
                tokens = list(context or []) + await engine.tokenize(text, add_bos=not context)
                return _drop_double_bos(tokens, engine)

            def split(text: str, logprob: dict[str, Any] | None) -> Piece | None:
                """One token's text as thinking and content (content held back while it may be a
                tool call); None when there is nothing to send yet."""
                nonlocal held
                thinking, content = parser.feed(text) if parser is not None else ("", text)
                if deferred and not constrained and parser is not None and parser.thinking_done:
                    content = ""  # regenerated under the grammar
                result.thinking += thinking
                result.text += content
                if logprob:
                    result.logprobs.append(logprob)
                if tools and content and (held or looks_like_tool_call(result.text)):
                    held += content
                    content = ""
                if thinking or content or logprob:
                    return Piece(content, [logprob] if logprob else [], thinking)
                return None

            raw = ""  # the model's own text, for the restart after thinking
            constrained = False  # in the second pass, under the grammar
            first_pass = _Either(cancel) if deferred else cancel
            async for event in engine.generate(await request_for(prompt), sampling, first_pass):
                if isinstance(event, TokenEvent):
                    if deferred and first_pass.is_set():
                        continue  # thinking is over: the rest is regenerated under the grammar
                    raw += event.text
                    piece = split(event.text, event.logprob)
                    if piece is not None:
                        yield piece
                    if deferred and parser is not None and parser.thinking_done:
                        first_pass.set()  # stops at the next token; its DoneEvent still comes
                elif isinstance(event, DoneEvent):
                    result.done = event
            if deferred and parser is not None and parser.thinking_done and not cancel.is_set():
                # The thinking, through its end, is now part of the prompt.
                thought = parser.restart(raw)
                constrained = True
                with_grammar = dataclasses.replace(sampling, grammar=deferred)
                before = result.done
                async for event in engine.generate(await request_for(prompt + thought), with_grammar, _Either(cancel)):
                    if isinstance(event, TokenEvent):
                        piece = split(event.text, event.logprob)
                        if piece is not None:
                            yield piece
                    elif isinstance(event, DoneEvent):
                        result.done = _both_passes(before, event)
        if parser is not None:
            thinking, content = parser.finish()
            result.thinking += thinking
            result.text += content
            if tools and content and (held or looks_like_tool_call(result.text)):
                held += content
            elif thinking or content:
                yield Piece(content, [], thinking)
            result.tool_calls = list(parser.tool_calls)  # harmony's: calls are messages of their own
        if tools and not result.tool_calls:
            result.tool_calls, leftover = parse_tool_calls(result.text, {n for n in tool_names if n})
            if not result.tool_calls and held:
                yield Piece(held)
            elif result.tool_calls:
                result.text = leftover
        result.total_ns = time.perf_counter_ns() - start
        yield result

    async def embed(
        self,
        resolved: Resolved,
        inputs: list[str],
        options: dict[str, Any],
        *,
        truncate: bool,
        keep_alive: float | None,
    ) -> tuple[list[list[float]], int, int]:
        """Raw vectors, tokens evaluated, load nanoseconds."""
        if not inputs:
            await self.load_only(resolved, options, keep_alive, embedding=True)
            return [], 0, 0
        async with self.runner(resolved, self.spec(resolved, options, embedding=True), keep_alive) as (runner, load_ns):
            try:
                vectors, count = await runner.engine.embed(inputs, truncate)
            except EngineError as e:
                raise ApiError(400, str(e)) from None
        return vectors, count, load_ns

    def think(self, resolved: Resolved, value: Any) -> Think:
        """A request's ``think`` for this model (Ollama's default: on for a thinking model)."""
        try:
            return request_think(value, resolved.info.capabilities, resolved.requested)
        except ThinkError as e:
            raise ApiError(400, str(e)) from None

    def thinking_parser(
        self, resolved: Resolved, think: Think | None, prompt: str
    ) -> ThinkingParser | HarmonyParser | None:
        info = resolved.info
        jinja = info.gguf.get("tokenizer.chat_template") if info.template is None else None
        jinja = jinja if isinstance(jinja, str) else None
        return parser_for(think or Think(), info.config, info.template, jinja, prompt, info.architecture)

    # -- prompts -----------------------------------------------------------------------------------

    async def chat_prompt(
        self,
        resolved: Resolved,
        messages: list[Message],
        tools: list[dict[str, Any]] | None,
        think: Think | None = None,
        *,
        truncate: bool = False,
        num_ctx: int = 0,
    ) -> str:
        """The conversation as prompt text; each message's images are marked in its content (pass
        ``images_of(messages)`` along to ``complete``). With ``truncate``, the oldest messages
        that do not fit ``num_ctx`` tokens are left out (``_fit_messages``)."""
        check_images(resolved, any(m.images for m in messages))
        messages = [
            dataclasses.replace(m, content=with_image_markers(m.content, len(m.images))) if m.images else m
            for m in messages
        ]
        info = resolved.info
        seeded = [
            Message(m.get("role", "user"), str(m.get("content", "")), thinking=_text_or_none(m.get("thinking")))
            for m in info.messages
        ]
        convo = seeded + messages
        # §8.4: the model's SYSTEM comes first unless the request's own first message is a system
        # message (the MESSAGE seeds before it do not count).
        if info.system and not (messages and messages[0].role == "system"):
            convo = [Message("system", info.system), *convo]
        if truncate and num_ctx > 0 and len(convo) > 1 and resolved.info.model_path and not resolved.info.error:
            return await self._fit_messages(resolved, convo, tools, think, num_ctx)
        return await self._render(resolved, convo, tools, think=think)

    async def _fit_messages(
        self,
        resolved: Resolved,
        convo: list[Message],
        tools: list[dict[str, Any]] | None,
        think: Think | None,
        num_ctx: int,
    ) -> str:
        """The prompt of the newest messages that fit ``num_ctx`` tokens, as Ollama's chat
        truncation: the last message always, the system messages before the cut always, older
        turns dropped oldest first (an image counts 768 tokens, as Ollama counts it). What is
        still too long is cut token by token by the engine (``runtime.generation.fit``)."""
        path = str(resolved.info.model_path)

        def tokens(part: list[Message], text: str) -> int:
            return vocab_for(path).count(text) + 768 * sum(len(m.images or []) for m in part)

        def keep_from(i: int) -> list[Message]:
            return [m for m in convo[:i] if m.role == "system"] + convo[i:]

        whole = await self._render(resolved, convo, tools, think=think)
        try:
            if await anyio.to_thread.run_sync(tokens, convo, whole) <= num_ctx:
                return whole
            start, text = len(convo) - 1, ""
            for i in range(len(convo) - 2, -1, -1):  # newest first, until one more does not fit
                candidate = await self._render(resolved, keep_from(i), tools, think=think)
                if await anyio.to_thread.run_sync(tokens, keep_from(i), candidate) > num_ctx:
                    break
                start, text = i, candidate
        except EngineError as e:
            raise ApiError(500, str(e)) from None
        return text or await self._render(resolved, keep_from(start), tools, think=think)

    async def generate_prompt(
        self,
        resolved: Resolved,
        prompt: str,
        system: str | None,
        template: str | None,
        suffix: str,
        think: Think | None = None,
    ) -> str:
        info = resolved.info
        messages = []
        sys_text = system if system is not None else info.system
        if sys_text:
            messages.append(Message("system", sys_text))
        messages.append(Message("user", prompt))
        return await self._render(resolved, messages, None, template, suffix, think)

    async def _render(
        self,
        resolved: Resolved,
        messages: list[Message],
        tools: list[dict[str, Any]] | None,
        template: str | None = None,
        suffix: str = "",
        think: Think | None = None,
    ) -> str:
        def render() -> str:
            try:
                return self.template_for(resolved, template).render(messages, tools, suffix, think)
            except TemplateError as e:
                raise ApiError(400, f"template error: {e}") from None

        # In a worker thread: a template's budget (formats.gotemplate) may take a second to spend.
        return await anyio.to_thread.run_sync(render)


class _Either(threading.Event):
    """A cancel flag of its own that also reads as set once ``outer`` is (the client left)."""

    def __init__(self, outer: threading.Event) -> None:
        super().__init__()
        self.outer = outer

    def is_set(self) -> bool:
        return super().is_set() or self.outer.is_set()


def _both_passes(first: DoneEvent | None, second: DoneEvent) -> DoneEvent:
    """The counts of a generation that thought, then restarted under a grammar: the prompt as
    first read, the tokens of both passes."""
    if first is None:
        return second
    return dataclasses.replace(
        second,
        prompt_tokens=first.prompt_tokens,
        cached_tokens=first.cached_tokens,
        prompt_ns=first.prompt_ns,
        eval_tokens=first.eval_tokens + second.eval_tokens,
        eval_ns=first.eval_ns + second.prompt_ns + second.eval_ns,
    )


def sampling_from(options: dict[str, Any], grammar: str | None, logprobs: bool, top_logprobs: int) -> Sampling:
    o = {**DEFAULTS, **options}  # the defaults live in formats.options, nowhere else
    return Sampling(
        temperature=float(o["temperature"]),
        top_k=int(o["top_k"]),
        top_p=float(o["top_p"]),
        min_p=float(o["min_p"]),
        typical_p=float(o["typical_p"]),
        repeat_penalty=float(o["repeat_penalty"]),
        repeat_last_n=int(o["repeat_last_n"]),
        presence_penalty=float(o["presence_penalty"]),
        frequency_penalty=float(o["frequency_penalty"]),
        seed=int(o["seed"]),
        num_predict=int(o["num_predict"]),
        num_keep=int(o["num_keep"]),
        stop=list(o["stop"] or []),
        grammar=grammar,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def check_images(resolved: Resolved, has_images: bool) -> None:
    """Images need a model with a projector layer."""
    if has_images and "vision" not in resolved.info.capabilities:
        raise ApiError(400, f'"{resolved.requested}" does not support images')


def with_image_markers(content: str, count: int) -> str:
    """Where a message's images go in its text: at its ``[img]`` placeholders when it has one for
    each image (as Ollama allows), otherwise all before the text."""
    from runtime.vision import image_marker

    marker = image_marker()
    if count and content.count("[img]") == count:
        return content.replace("[img]", marker)
    return marker * count + content


def images_of(messages: list[Message]) -> list[bytes]:
    """The images of a conversation, in the order their markers appear."""
    try:
        return [base64.b64decode(image, validate=True) for m in messages for image in m.images or []]
    except ValueError:
        raise ApiError(400, "invalid image data: not base64") from None


def grammar_for(fmt: Any) -> str | None:
    """GBNF for ``format``: ``"json"`` or a JSON schema; None for no constraint."""
    if fmt is None or fmt == "" or fmt == "null":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if fmt == "json":
        return str(JSON_GBNF)
    if isinstance(fmt, dict):
        try:
            grammar = str(json_schema_to_gbnf(json.dumps(fmt)))
        except Exception as e:  # the converter raises many kinds
            raise ApiError(400, f"invalid format: {e}") from None
        # The converter lets raw control characters into strings, which JSON forbids.
        return grammar.replace(r'char ::= [^"\\]', r'char ::= [^"\\\x7F\x00-\x1F]')
    raise ApiError(400, f'invalid format: {json.dumps(fmt)}; expected "json" or a JSON schema')


def normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _special_tokens(info: ModelInfo) -> tuple[str, str]:
    return str(info.special_tokens.get("bos", "")), str(info.special_tokens.get("eos", ""))


def _drop_double_bos(tokens: list[int], engine: GenerationEngine) -> list[int]:
    """A template that writes the BOS text itself plus the tokenizer adding one gives two."""
    bos = engine.bos
    if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
        return tokens[1:]
    return tokens
