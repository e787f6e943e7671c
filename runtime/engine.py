"""One loaded model: a ``llama_cpp.Llama`` owned by one long-lived thread, and the interface the
scheduler and the service see (:class:`GenerationEngine`: load, tokenize, submit a request and
stream its tokens, cancel through a flag, close).

Every llama.cpp call for a model happens on its own thread: the CPU build's OpenMP pool runs much
slower when decode calls hop between threads (performance-notes.md). The async side submits jobs
and reads events from an asyncio queue. Between jobs the thread runs the model's decode loop
(``runtime.batch``): the requests it serves at once (``LoadSpec.num_parallel``) share each step.

The context (§8.3 of the protocol): a prompt longer than the context is cut after its first
``num_keep`` tokens, leaving room for the reply (``truncate``; without it a 400), and a reply that
fills the context drops the older half of what follows ``num_keep`` and goes on (``shift``;
without it the reply ends with ``done_reason: "length"``). Each request has a context of
``num_ctx`` tokens of its own: the model's context holds ``num_ctx × num_parallel``."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from formats.options import DEFAULT_CONTEXT_LENGTH, DEFAULTS
from runtime.batch import Batcher, Sequence
from runtime.generation import DoneEvent, EngineError, MediaPrompt, Sampling, TokenEvent

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
    num_parallel: int = 1  # requests decoded together, each with a context of num_ctx tokens


class Cancel(Protocol):
    """A request's cancel flag (a ``threading.Event``): set when its reader has gone away."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class GenerationEngine(Protocol):
    """What the scheduler and the service use of a loaded model (``Engine``, or a test's fake)."""

    spec: LoadSpec
    load_ns: int  # nanoseconds the load took
    gpu_layers: int
    n_layers: int

    async def load(self) -> None: ...

    def close(self) -> None:
        """Free the model once the requests already submitted are done or failed."""

    async def tokenize(self, text: str, add_bos: bool = True) -> list[int]: ...

    @property
    def bos(self) -> int:
        """The model's beginning-of-text token (-1: none)."""

    @property
    def image_marker(self) -> str:
        """The text standing for one image in a prompt ("" without a projector)."""

    async def embed(self, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]: ...

    def generate(
        self, prompt: list[int] | MediaPrompt, sampling: Sampling, cancel: Cancel
    ) -> AsyncIterator[TokenEvent | DoneEvent]:
        """Submit a request and stream its tokens; the last event is a DoneEvent. Setting
        ``cancel`` (or leaving the iteration early) ends it within one step."""


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
    """A model on its own thread (see the module's docstring); implements GenerationEngine."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.llm: Any = None
        self.load_ns = 0
        self.gpu_layers = 0
        self.n_layers = 0
        self.vision: Any = None
        self.batcher: Batcher | None = None
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._loop, name=f"engine:{os.path.basename(spec.model_path)[:19]}", daemon=True
        )
        self._thread.start()

    # -- the engine thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            busy = self.batcher is not None and self.batcher.active
            # Jobs (a tokenization, a new request) run between decode steps; with nothing to
            # decode the thread sleeps until the next job.
            for _ in range(max(1, self._jobs.qsize()) if busy else 1):
                try:
                    job = self._jobs.get(block=not busy)
                except queue.Empty:
                    break
                if job is None:
                    return self._free()
                job()
            if self.batcher is not None and self.batcher.active:
                self.batcher.step()

    def _free(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None
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
        if not spec.embedding and spec.num_parallel > 1:
            _parallel_context(llm, spec.num_ctx, spec.num_parallel)
        if spec.projector and not spec.embedding:
            from runtime.vision import Vision

            try:
                self.vision = Vision(llm, spec.projector, kwargs["n_threads"], gpu)
            except ValueError as e:
                raise EngineError(f"failed to load the model's projector: {e}") from None
        if not spec.embedding:
            self.batcher = Batcher(llm, max(1, spec.num_parallel), self.n_ctx, self.vision)
        self.n_layers = int(llama_cpp.llama_model_n_layer(llm._model.model))
        self.gpu_layers = 0 if not gpu else (self.n_layers if n_gpu_layers < 0 else min(n_gpu_layers, self.n_layers))
        self.load_ns = time.perf_counter_ns() - start

    @property
    def n_ctx(self) -> int:
        """Tokens the context holds for one request. llama.cpp rounds a small context up
        (128 → 256) while the request asked for its size: the smaller one is the limit."""
        if self.llm is None:
            return self.spec.num_ctx
        import llama_cpp

        return min(int(llama_cpp.llama_n_ctx_seq(self.llm.ctx)), self.spec.num_ctx)

    @property
    def bos(self) -> int:
        return int(self.llm.token_bos()) if self.llm is not None else -1

    async def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return await self.run(lambda: list(self.llm.tokenize(text.encode(), add_bos=add_bos, special=True)))

    async def embed(self, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
        """One raw (not normalised) vector per text, and the tokens evaluated; the inputs go
        through the model together, as many to a batch as fit."""

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
        self, prompt: list[int] | MediaPrompt, sampling: Sampling, cancel: Cancel
    ) -> AsyncIterator[TokenEvent | DoneEvent]:
        """Stream the tokens generated after ``prompt``; the last event is a DoneEvent."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent | DoneEvent | BaseException] = asyncio.Queue()
        submitted = time.perf_counter_ns()

        def emit(event: TokenEvent | DoneEvent | BaseException) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def job() -> None:
            if self.batcher is None:
                emit(EngineError("this model is loaded for embeddings, not for generating"))
            else:
                self.batcher.submit(Sequence(prompt, sampling, cancel, emit, submitted))

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
            cancel.set()  # the reader left early: its slot is freed at the next step


def _parallel_context(llm: Any, num_ctx: int, n_seq: int) -> None:
    """Give ``llm`` a context of ``n_seq`` sequences of ``num_ctx`` tokens each in place of the
    one-sequence context ``Llama`` makes (its constructor has no such option). Each sequence
    has cells of its own (not unified): one request never evicts another's."""
    import llama_cpp
    from llama_cpp._internals import LlamaContext
    from llama_cpp._utils import suppress_stdout_stderr

    params = llm.context_params
    params.n_ctx = num_ctx * n_seq
    params.n_seq_max = n_seq
    params.kv_unified = False
    old = llm._ctx
    try:
        with suppress_stdout_stderr(disable=False):  # llama.cpp logs its cache layout to stderr
            ctx = LlamaContext(model=llm._model, params=params, verbose=False)
    except ValueError as e:
        raise EngineError(f"failed to make a context for {n_seq} parallel requests: {e}") from None
    old.close()
    llm._ctx = ctx
    llm._stack.callback(ctx.close)
    if llm._lora_adapter is not None:
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(llm._lora_adapter)
        scales = (ctypes.c_float * 1)(llm.lora_scale)
        if llama_cpp.llama_set_adapters_lora(ctx.ctx, adapters, 1, scales):
            raise EngineError("failed to apply the adapter to the parallel context")


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
