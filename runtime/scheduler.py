"""Which models are loaded, for how long, and who waits.

- A request names a model and a :class:`~runtime.engine.LoadSpec`; a loaded runner with the same
  spec is reused, one with another spec (other runner options) is replaced.
- Loading makes room first: idle runners are unloaded, least recently used first, while
  ``HANGAR_MAX_LOADED_MODELS`` or the memory budget would be exceeded; when every runner is busy
  the request waits for one to finish.
- At most ``HANGAR_MAX_QUEUE`` requests wait; the next one is refused (503).
- A runner serves ``HANGAR_NUM_PARALLEL`` requests at once (its engine decodes them together,
  ``runtime.batch``); unset, 4 where the memory budget holds four contexts, else 1 (as Ollama).
  Embedding runners serve one request at a time (an ``/api/embed`` call batches its own inputs).
  When the last request finishes, the keep-alive timer starts: 0 unloads at once, infinity
  never, else after that many seconds.

Decisions are small pure functions (:func:`eviction_order`, :func:`estimate_size`,
:func:`parallel_for`) so tests can check them without loading anything; ``engine_factory`` lets
tests swap the engine for anything that has ``runtime.engine.GenerationEngine``'s interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from runtime.config import RuntimeSettings
from runtime.engine import Engine, GenerationEngine, LoadSpec


class Busy(Exception):
    """The queue of waiting requests is full."""


@dataclass
class Runner:
    model: str  # the model's canonical name
    spec: LoadSpec
    engine: GenerationEngine
    size: int
    slots: asyncio.Semaphore
    keep_alive: float
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None  # wall-clock unix time, for /api/ps
    _timer: asyncio.Task[None] | None = None


KV_PER_TOKEN = 64 * 1024  # bytes of KV cache a token takes: generous for small models
AUTO_PARALLEL = 4  # HANGAR_NUM_PARALLEL's default where memory allows (Ollama's)


def estimate_size(spec: LoadSpec) -> int:
    """Memory a loaded model needs: its weights plus a rough KV-cache allowance for each of its
    ``num_parallel`` contexts."""
    try:
        weights = os.path.getsize(spec.model_path) + sum(os.path.getsize(a) for a in spec.adapters)
    except OSError:
        weights = 0
    return weights + spec.num_ctx * max(1, spec.num_parallel) * KV_PER_TOKEN


def parallel_for(spec: LoadSpec, setting: int, budget: int) -> int:
    """How many requests a model loaded with ``spec`` serves at once: ``HANGAR_NUM_PARALLEL``
    when set (``setting`` > 0); else 4 when four contexts fit ``budget``, else 1. Embedding
    models: 1."""
    if spec.embedding:
        return 1
    if setting > 0:
        return setting
    four = estimate_size(dataclasses.replace(spec, num_parallel=AUTO_PARALLEL))
    return AUTO_PARALLEL if four <= budget else 1


def eviction_order(runners: list[Runner]) -> list[Runner]:
    """Idle runners, least recently used first."""
    return sorted((r for r in runners if r.in_use == 0), key=lambda r: r.last_used)


class Scheduler:
    def __init__(
        self, settings: RuntimeSettings, engine_factory: Callable[[LoadSpec], GenerationEngine] = Engine
    ) -> None:
        self.settings = settings
        self.engine_factory = engine_factory
        self.runners: dict[str, Runner] = {}
        self._waiting = 0
        self._changed = asyncio.Condition()

    @property
    def waiting(self) -> int:
        """Requests waiting for a load or a free slot (at most ``HANGAR_MAX_QUEUE``)."""
        return self._waiting

    @contextlib.asynccontextmanager
    async def use(self, model: str, spec: LoadSpec, keep_alive: float | None) -> AsyncIterator[Runner]:
        """Hold a loaded runner for one request (``spec.num_parallel`` is the scheduler's to set)."""
        spec = dataclasses.replace(
            spec, num_parallel=parallel_for(spec, self.settings.num_parallel, self.settings.memory_budget)
        )
        if self._waiting >= self.settings.max_queue:
            raise Busy("server busy, please try again.  maximum pending requests exceeded")
        self._waiting += 1  # until this request runs: waiting for a load or for a free slot
        waiting = True
        try:
            runner = await self._acquire(model, spec, keep_alive)
            try:
                async with runner.slots:
                    self._waiting -= 1
                    waiting = False
                    yield runner
            finally:
                await self._release(runner, keep_alive)
        finally:
            if waiting:
                self._waiting -= 1

    async def _acquire(self, model: str, spec: LoadSpec, keep_alive: float | None) -> Runner:
        async with self._changed:
            while True:
                runner = self.runners.get(model)
                if runner is not None and runner.spec == spec:
                    break
                if runner is not None and runner.in_use:
                    await self._changed.wait()  # let its requests finish before replacing it
                    continue
                if runner is not None:
                    self._unload(runner)
                size = estimate_size(spec)
                if not self._make_room(size):
                    await self._changed.wait()
                    continue
                engine = self.engine_factory(spec)
                try:
                    await engine.load()
                except BaseException:
                    engine.close()
                    raise
                runner = Runner(
                    model,
                    spec,
                    engine,
                    size,
                    asyncio.Semaphore(spec.num_parallel),
                    self.settings.keep_alive if keep_alive is None else keep_alive,
                )
                self.runners[model] = runner
                break
            runner.in_use += 1
            runner.last_used = time.monotonic()
            runner.expires_at = None
            if runner._timer is not None:
                runner._timer.cancel()
                runner._timer = None
            if keep_alive is not None:
                runner.keep_alive = keep_alive
            return runner

    def _make_room(self, size: int) -> bool:
        """Unload idle runners until one more of ``size`` fits; False if it cannot yet."""
        budget = self.settings.memory_budget
        for victim in eviction_order(list(self.runners.values())):
            if len(self.runners) < self.settings.max_loaded_models and self._used() + size <= budget:
                break
            self._unload(victim)
        if len(self.runners) >= self.settings.max_loaded_models:
            return False
        # A model bigger than the whole budget still loads when nothing else is loaded.
        return self._used() + size <= budget or not self.runners

    def _used(self) -> int:
        return sum(r.size for r in self.runners.values())

    async def _release(self, runner: Runner, keep_alive: float | None) -> None:
        async with self._changed:
            runner.in_use -= 1
            runner.last_used = time.monotonic()
            if runner.in_use == 0 and self.runners.get(runner.model) is runner:
                duration = runner.keep_alive
                if duration <= 0:
                    self._unload(runner)
                elif not math.isinf(duration):
                    runner.expires_at = time.time() + duration
                    runner._timer = asyncio.create_task(self._expire(runner, duration))
            self._changed.notify_all()

    async def _expire(self, runner: Runner, after: float) -> None:
        await asyncio.sleep(after)
        async with self._changed:
            if runner.in_use == 0 and self.runners.get(runner.model) is runner:
                self._unload(runner)
                self._changed.notify_all()

    def _unload(self, runner: Runner) -> None:
        if self.runners.get(runner.model) is runner:
            del self.runners[runner.model]
        if runner._timer is not None and runner._timer is not asyncio.current_task():
            runner._timer.cancel()
        runner.engine.close()

    async def unload(self, model: str) -> bool:
        """Unload a model now if it is loaded and idle (``keep_alive: 0`` with nothing to do)."""
        async with self._changed:
            runner = self.runners.get(model)
            if runner is None:
                return False
            if runner.in_use:
                runner.keep_alive = 0  # it goes when its last request ends
                return True
            self._unload(runner)
            self._changed.notify_all()
            return True

    def loaded(self) -> list[Runner]:
        """Loaded runners, the longest to live first (as /api/ps lists them)."""
        return sorted(self.runners.values(), key=lambda r: -(math.inf if r.expires_at is None else r.expires_at))

    async def close(self) -> None:
        async with self._changed:
            for runner in list(self.runners.values()):
                self._unload(runner)
