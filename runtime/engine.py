"""One loaded model: a ``llama_cpp.Llama`` owned by one long-lived thread.

Every llama.cpp call for a model happens on its own thread: the CPU build's OpenMP pool runs much
slower when decode calls hop between threads (performance-notes.md). The async side submits jobs
and reads events from an asyncio queue; generation streams one event per token and stops at the
next token once its cancel flag is set (a client that went away).

The context (§8.3 of the protocol): a prompt longer than the context is cut after its first
``num_keep`` tokens, leaving room for the reply (``truncate``; without it a 400), and a reply that
fills the context drops the older half of what follows ``num_keep`` and goes on (``shift``;
without it the reply ends with ``done_reason: "length"``)."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import math
import os
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from formats.options import DEFAULT_CONTEXT_LENGTH, DEFAULTS

T = TypeVar("T")


@dataclass(frozen=True)
class LoadSpec:
    """What makes two loaded instances interchangeable (a change means a reload)."""

    model_path: str
    adapters: tuple[str, ...] = ()
    num_ctx: int = DEFAULT_CONTEXT_LENGTH
    num_batch: int = DEFAULTS["num_batch"]
    num_gpu: int = DEFAULTS["num_gpu"]  # layers on the GPU; -1 all (when the build has a GPU backend)
    num_thread: int = DEFAULTS["num_thread"]  # 0: llama.cpp's choice
    use_mmap: bool = True
    embedding: bool = False
    projector: str | None = None  # an mmproj GGUF: the model reads images


@dataclass
class Sampling:
    temperature: float = DEFAULTS["temperature"]
    top_k: int = DEFAULTS["top_k"]
    top_p: float = DEFAULTS["top_p"]
    min_p: float = DEFAULTS["min_p"]
    typical_p: float = DEFAULTS["typical_p"]
    repeat_penalty: float = DEFAULTS["repeat_penalty"]
    repeat_last_n: int = DEFAULTS["repeat_last_n"]
    presence_penalty: float = DEFAULTS["presence_penalty"]
    frequency_penalty: float = DEFAULTS["frequency_penalty"]
    seed: int = DEFAULTS["seed"]
    num_predict: int = DEFAULTS["num_predict"]
    num_keep: int = DEFAULTS["num_keep"]
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool = True  # cut a prompt longer than the context (else BadInput)
    shift: bool = True  # shift the context when the reply fills it (else stop: "length")
    fail_after: int = -1  # tests only (HANGAR_TEST_FAIL_AFTER): raise EngineError after this many tokens


@dataclass
class TokenEvent:
    text: str
    logprob: dict[str, Any] | None = None


@dataclass
class DoneEvent:
    reason: str  # "stop" | "length" | "cancel"
    prompt_tokens: int
    eval_tokens: int
    prompt_ns: int
    eval_ns: int
    context: list[int]


@dataclass
class MediaPrompt:
    """Prompt text with one image marker (``Engine.image_marker``) per image, in order."""

    text: str
    images: list[bytes]


class EngineError(RuntimeError):
    pass


class BadInput(EngineError):
    """The request, not the engine, is at fault (an unreadable image, a token out of range)."""


TOO_LONG = "the input length exceeds the context length"  # Ollama's words
REPLY_ROOM = 64  # tokens a cut prompt leaves free for the reply (fewer in a small context)


def default_threads() -> int:
    """Physical cores this process may run on (as Ollama): llama-cpp-python's own default, half
    the logical CPUs, leaves half of a machine without SMT idle."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as f:
            cpu, package = -1, ""
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    package = value
                elif key == "core id" and cpu in allowed:
                    cores.add((package, value))
    except (OSError, ValueError):
        pass
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def gpu_available() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


class Engine:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.llm: Any = None
        self.load_ns = 0
        self.gpu_layers = 0
        self.n_layers = 0
        self.vision: Any = None
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._loop, name=f"engine:{os.path.basename(spec.model_path)[:19]}", daemon=True
        )
        self._thread.start()

    # -- the engine thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            job()
        if self.vision is not None:
            with contextlib.suppress(Exception):
                self.vision.close()
            self.vision = None
        if self.llm is not None:
            with contextlib.suppress(Exception):
                self.llm.close()
            self.llm = None

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` on the engine thread; await the result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def job() -> None:
            try:
                result = fn()
            except BaseException as e:
                loop.call_soon_threadsafe(_settle, future, None, e)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        self._jobs.put(job)
        return future

    def close(self) -> None:
        """Stop the thread after the jobs already queued; frees the model."""
        self._jobs.put(None)

    # -- operations --------------------------------------------------------------------------------

    async def load(self) -> None:
        await self.run(self._load)

    def _load(self) -> None:
        import llama_cpp
        from llama_cpp import Llama

        start = time.perf_counter_ns()
        spec = self.spec
        gpu = gpu_available()
        n_gpu_layers = 0 if not gpu else (-1 if spec.num_gpu < 0 else spec.num_gpu)
        kwargs: dict[str, Any] = {
            "n_ctx": spec.num_ctx,
            "n_batch": spec.num_batch,
            "n_ubatch": spec.num_batch,
            "n_gpu_layers": n_gpu_layers,
            "use_mmap": spec.use_mmap,
            "embedding": spec.embedding,
            "verbose": False,
        }
        kwargs["n_threads"] = kwargs["n_threads_batch"] = spec.num_thread if spec.num_thread > 0 else default_threads()
        if spec.adapters:
            kwargs["lora_path"] = spec.adapters[0]
        if spec.embedding:
            # Each input must fit one batch: pooling sees the whole sequence at once.
            kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
            kwargs["n_batch"] = kwargs["n_ubatch"] = spec.num_ctx
        try:
            llm = Llama(model_path=spec.model_path, **kwargs)
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"failed to load the model: {e}") from None
        if spec.embedding and llama_cpp.llama_pooling_type(llm.ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            # A generative model asked for embeddings: pool by mean, as one vector per input.
            llm.close()
            kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            llm = Llama(model_path=spec.model_path, **kwargs)
        self.llm = llm
        if spec.projector and not spec.embedding:
            from runtime.vision import Vision

            try:
                self.vision = Vision(llm, spec.projector, kwargs["n_threads"], gpu)
            except ValueError as e:
                raise EngineError(f"failed to load the model's projector: {e}") from None
        self.vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        self.n_layers = int(llama_cpp.llama_model_n_layer(llm._model.model))
        self.gpu_layers = 0 if not gpu else (self.n_layers if n_gpu_layers < 0 else min(n_gpu_layers, self.n_layers))
        self.load_ns = time.perf_counter_ns() - start

    @property
    def n_ctx(self) -> int:
        """Tokens the context holds. llama.cpp rounds a small context up (128 → 256) while
        llama-cpp-python's token history keeps the size asked for: the smaller one is the limit."""
        if self.llm is None:
            return self.spec.num_ctx
        return min(int(self.llm.n_ctx()), len(self.llm.input_ids))

    async def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return await self.run(lambda: list(self.llm.tokenize(text.encode(), add_bos=add_bos, special=True)))

    async def embed(self, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
        """One raw (not normalised) vector per text, and the tokens evaluated."""

        def job() -> tuple[list[list[float]], int]:
            llm = self.llm
            if not truncate:
                for text in texts:
                    if len(llm.tokenize(text.encode(), add_bos=True, special=True)) > self.n_ctx:
                        raise EngineError("the input length exceeds the context length")
            try:
                vectors, count = llm.embed(texts, normalize=False, truncate=True, return_count=True)
            finally:
                llm.reset()  # embedding cleared the KV cache; the next generation must not reuse it
            return [[float(x) for x in v] for v in vectors], int(count)

        return await self.run(job)

    @property
    def image_marker(self) -> str:
        return str(self.vision.marker) if self.vision is not None else ""

    async def generate(
        self, prompt: list[int] | MediaPrompt, sampling: Sampling, cancel: threading.Event
    ) -> AsyncIterator[TokenEvent | DoneEvent]:
        """Stream the tokens generated after ``prompt``; the last event is a DoneEvent."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent | DoneEvent | BaseException] = asyncio.Queue()

        def emit(event: TokenEvent | DoneEvent | BaseException) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def job() -> None:
            try:
                self._generate(prompt, sampling, cancel, emit)
            except BaseException as e:
                emit(e)

        self._jobs.put(job)
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, DoneEvent):
                    return
        finally:
            cancel.set()  # the reader left early: stop at the next token

    def _generate(
        self, request: list[int] | MediaPrompt, s: Sampling, cancel: threading.Event, emit: Callable[[Any], None]
    ) -> None:
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        llm = self.llm
        n_ctx = self.n_ctx
        start = time.perf_counter_ns()
        keep = _keep(s.num_keep, n_ctx)
        if isinstance(request, MediaPrompt):
            prompt = self._evaluate_media(request)  # evaluated: its logits are ready
        else:
            n_vocab = llm.n_vocab()
            if any(t < 0 or t >= n_vocab for t in request):
                raise BadInput("the context holds tokens this model does not have")
            if len(request) > n_ctx and not s.truncate:
                raise BadInput(TOO_LONG)
            prompt = fit(request, n_ctx, keep, s.num_predict)
            _prefill(llm, prompt)
        llm.set_seed(s.seed if s.seed >= 0 else random.randrange(2**31))
        llm.last_n_tokens_size = n_ctx if s.repeat_last_n < 0 else s.repeat_last_n
        grammar = LlamaGrammar.from_string(s.grammar, verbose=False) if s.grammar else None
        # One sampler for the whole reply: a context shift must not restart the grammar.
        sampler = llm._init_sampler(
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            typical_p=s.typical_p,
            temp=s.temperature,
            repeat_penalty=s.repeat_penalty,
            frequency_penalty=s.frequency_penalty,
            presence_penalty=s.presence_penalty,
            grammar=grammar,
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        generated: list[int] = []
        reason = "stop"
        first = 0
        limit = s.num_predict if s.num_predict >= 0 else math.inf
        if limit == 0 or cancel.is_set():
            reason = "length" if limit == 0 else "cancel"
        while reason == "stop":
            token = sampler.sample(llm._ctx, -1)
            if not first:
                first = time.perf_counter_ns()
            if cancel.is_set():
                reason = "cancel"
                break
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                break
            if 0 <= s.fail_after <= len(generated):
                raise EngineError(f"test fault: the engine failed after {len(generated)} tokens")
            logprob = self._logprob(token, s.top_logprobs) if s.logprobs else None
            # The tokens before this one (a few suffice) let SentencePiece pieces decode their spaces.
            previous = generated[-8:] if len(generated) >= 8 else [t for t in prompt[-8:] if t >= 0] + generated
            generated.append(token)
            piece = decoder.decode(llm.detokenize([token], prev_tokens=previous[-8:]))
            pending += piece
            if s.stop:
                cut = _find_stop(pending, s.stop)
                if cut is not None:
                    pending = pending[:cut]
                    break
                held = _stop_prefix_len(pending, s.stop)
                ready, pending = pending[: len(pending) - held], pending[len(pending) - held :]
            else:
                ready, pending = pending, ""
            if ready or logprob is not None:
                emit(TokenEvent(ready, logprob))
            if len(generated) >= limit:
                reason = "length"
                break
            if llm.n_tokens >= n_ctx and not (s.shift and _shift(llm, keep)):
                reason = "length"  # the context is full (Ollama's shift: false)
                break
            llm.eval([token])
        tail = pending + decoder.decode(b"", final=True)
        if tail:
            emit(TokenEvent(tail))
        end = time.perf_counter_ns()
        first = first or end
        context = [t for t in prompt if t >= 0] + generated  # image positions cannot be sent back
        emit(DoneEvent(reason, len(prompt), len(generated), first - start, end - first, context))

    def _evaluate_media(self, request: MediaPrompt) -> list[int]:
        from runtime.vision import BadImage

        if self.vision is None:
            raise BadInput("this model has no projector to read images with")
        try:
            return list(self.vision.evaluate(self.llm, request.text, request.images))
        except BadImage as e:
            raise BadInput(str(e)) from None

    def _logprob(self, token: int, top: int) -> dict[str, Any]:
        import llama_cpp
        import numpy as np

        llm = self.llm
        n_vocab = llm.n_vocab()
        pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(n_vocab,)).astype(np.float64)
        shifted = logits - logits.max()
        logsum = math.log(float(np.exp(shifted).sum()))
        logprobs = shifted - logsum

        def entry(t: int) -> dict[str, Any]:
            text = llm.detokenize([t], special=True)
            return {"token": text.decode(errors="replace"), "logprob": float(logprobs[t]), "bytes": list(text)}

        out = entry(token)
        if top > 0:
            best = np.argpartition(-logprobs, min(top, n_vocab - 1))[:top]
            out["top_logprobs"] = [entry(int(t)) for t in sorted(best, key=lambda t: -logprobs[t])]
        return out


class Tokenizer:
    """A model's tokenizer alone (llama.cpp loads the vocabulary, not the weights): counts the
    tokens of a prompt before the model is loaded, to know which messages fit (runtime.service).
    Safe from any thread: tokenizing reads the vocabulary only."""

    def __init__(self, model_path: str) -> None:
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        with suppress_stdout_stderr(disable=False):
            self._model = llama_cpp.llama_model_load_from_file(model_path.encode(), params)
        if not self._model:
            raise EngineError(f"failed to read the vocabulary of {os.path.basename(model_path)}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)

    def count(self, text: str) -> int:
        import llama_cpp

        raw = text.encode()
        room = len(raw) + 16
        buffer = (llama_cpp.llama_token * room)()
        n = llama_cpp.llama_tokenize(self._vocab, raw, len(raw), buffer, room, True, True)
        return int(n if n >= 0 else -n)

    def __del__(self) -> None:  # not close(): a thread may still be counting with it
        import llama_cpp

        if getattr(self, "_model", None):
            llama_cpp.llama_model_free(self._model)
            self._model = None


_vocabs: dict[str, Tokenizer] = {}
_vocabs_lock = threading.Lock()
MAX_VOCABS = 8


def vocab_for(model_path: str) -> Tokenizer:
    """The model file's Tokenizer, loaded once (the few most recent kept); blocking."""
    with _vocabs_lock:
        vocab = _vocabs.pop(model_path, None) or Tokenizer(model_path)
        _vocabs[model_path] = vocab  # most recent last
        while len(_vocabs) > MAX_VOCABS:
            del _vocabs[next(iter(_vocabs))]
        return vocab


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _keep(num_keep: int, n_ctx: int) -> int:
    """Tokens at the start of the context that truncation and shifting never drop (as Ollama:
    negative keeps the whole prompt; at least one token must stay droppable)."""
    return max(0, n_ctx - 1 if num_keep < 0 else min(num_keep, n_ctx - 1))


def fit(prompt: list[int], n_ctx: int, keep: int, num_predict: int = -1) -> list[int]:
    """The prompt cut to leave room for the reply: its first ``keep`` tokens and its newest ones.

    The room is ``REPLY_ROOM`` tokens (or ``num_predict`` when smaller), at most a quarter of the
    context, at least one token; ``keep`` gives way when it would leave none of the prompt's end
    (num_keep 4 in a context of 4). A prompt that fits the context but not the room is left whole:
    the reply then shifts the context."""
    if len(prompt) <= n_ctx - 1:
        return prompt
    want = REPLY_ROOM if num_predict < 0 else max(1, min(num_predict, REPLY_ROOM))
    room = max(1, min(want, n_ctx // 4))
    keep = min(keep, n_ctx - room - 1)
    return prompt[:keep] + prompt[len(prompt) - (n_ctx - room - keep) :]


def _prefill(llm: Any, prompt: list[int]) -> None:
    """Evaluate ``prompt``, reusing what the context already holds of it (a conversation goes
    on). When it holds exactly the prompt and its logits are still there (the same request
    again), nothing is evaluated: re-evaluating the last token alone would give logits that
    differ in the last bits from the first time, and the same request must answer the same."""
    held = [int(t) for t in llm.input_ids[: llm.n_tokens]]
    same = 0
    for a, b in zip(held, prompt, strict=False):
        if a != b:
            break
        same += 1
    if same == len(prompt) == llm.n_tokens and not llm._requires_eval:
        return
    same = min(same, len(prompt) - 1)  # at least the last token, for logits to sample from
    if same > 0 and llm._ctx.kv_cache_seq_rm(-1, same, -1):
        llm.n_tokens = same
        llm._requires_eval = True
    else:
        llm.reset()
        llm._ctx.kv_cache_clear()
    llm.eval(prompt[llm.n_tokens :])


def _shift(llm: Any, keep: int) -> bool:
    """Make room in a full context as Ollama does: drop the older half of the tokens after the
    first ``keep`` and move the rest down. False when the model's memory cannot shift."""
    n = llm.n_tokens
    discard = max(1, (n - keep) // 2)
    if not llm._ctx.kv_cache_seq_rm(0, keep, keep + discard):  # one sequence: 0
        return False
    llm._ctx.kv_cache_seq_shift(0, keep + discard, n, -discard)
    llm.input_ids[keep : n - discard] = llm.input_ids[keep + discard : n].copy()
    llm.n_tokens = n - discard
    return True


def _find_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """How much of the end of ``text`` could be the start of a stop sequence (held back)."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
