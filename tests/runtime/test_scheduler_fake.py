"""The scheduler against a fake engine (``runtime.engine.GenerationEngine``'s interface, no model):
reuse and reloads, eviction by count and by memory, parallel slots, the queue limit, keep-alive,
failed loads, and how many requests a model serves at once."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from runtime.config import RuntimeSettings
from runtime.engine import Cancel, LoadSpec
from runtime.generation import DoneEvent, EngineError, MediaPrompt, Sampling, TokenEvent
from runtime.scheduler import AUTO_PARALLEL, KV_PER_TOKEN, Busy, Scheduler, estimate_size, parallel_for

T = TypeVar("T")
MiB = 1024 * 1024


class FakeEngine:
    """Generates ``sampling.num_predict`` tokens ("t0 t1 …"), one each time ``tick`` is released
    (or at once when ``free_running``); records what happened to it."""

    def __init__(self, spec: LoadSpec, log: list[str], fail_load: bool = False) -> None:
        self.spec = spec
        self.load_ns = 1
        self.gpu_layers = 0
        self.n_layers = 2
        self.log = log
        self.fail_load = fail_load
        self.closed = False
        self.active = 0  # requests generating now
        self.most_active = 0
        self.tick = asyncio.Event()
        self.free_running = True

    async def load(self) -> None:
        self.log.append(f"load {Path(self.spec.model_path).name} ctx={self.spec.num_ctx} x{self.spec.num_parallel}")
        if self.fail_load:
            raise EngineError("failed to load the model: broken")

    def close(self) -> None:
        self.log.append(f"close {Path(self.spec.model_path).name}")
        self.closed = True

    async def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return [1] * add_bos + [ord(c) for c in text]

    @property
    def bos(self) -> int:
        return 1

    @property
    def image_marker(self) -> str:
        return ""

    async def embed(self, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
        return [[float(len(t))] for t in texts], sum(len(t) for t in texts)

    async def generate(
        self, prompt: list[int] | MediaPrompt, sampling: Sampling, cancel: Cancel
    ) -> AsyncIterator[TokenEvent | DoneEvent]:
        assert not self.closed, "a closed engine was given a request"
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        out: list[int] = []
        try:
            for i in range(sampling.num_predict):
                if not self.free_running:
                    await self.tick.wait()
                    self.tick.clear()
                if cancel.is_set():
                    break
                out.append(i)
                yield TokenEvent(f"t{i} ")
            reason = "cancel" if cancel.is_set() else "length"
            tokens = prompt if isinstance(prompt, list) else []
            yield DoneEvent(reason, len(tokens), len(out), 0, 0, tokens + out)
        finally:
            self.active -= 1
            cancel.set()


class Harness:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.log: list[str] = []
        self.engines: list[FakeEngine] = []
        self.failing: set[str] = set()
        self.files: dict[str, str] = {}
        for name, size in (("a", 1), ("b", 1), ("c", 1), ("big", 8)):
            path = tmp_path / f"{name}.gguf"
            path.write_bytes(b"\0" * size * MiB)
            self.files[name] = str(path)
        self.settings = RuntimeSettings(**{"max_memory": 1024 * MiB, **settings})
        self.scheduler = Scheduler(self.settings, self.make)

    def make(self, spec: LoadSpec) -> FakeEngine:
        engine = FakeEngine(spec, self.log, fail_load=Path(spec.model_path).stem in self.failing)
        self.engines.append(engine)
        return engine

    def spec(self, name: str, **kw: Any) -> LoadSpec:
        return LoadSpec(self.files[name], num_ctx=kw.pop("num_ctx", 256), **kw)

    async def ask(self, name: str, tokens: int = 3, keep_alive: float | None = None, **kw: Any) -> str:
        async with self.scheduler.use(name, self.spec(name, **kw), keep_alive) as runner:
            text = ""
            async for event in runner.engine.generate([1, 2], Sampling(num_predict=tokens), threading.Event()):
                if isinstance(event, TokenEvent):
                    text += event.text
            return text


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro(), 20))  # type: ignore[arg-type]


def test_a_loaded_model_is_reused_and_a_new_spec_reloads_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, num_parallel=2)

    async def go() -> None:
        assert await h.ask("a") == "t0 t1 t2 "
        assert await h.ask("a") == "t0 t1 t2 "
        assert h.log == ["load a.gguf ctx=256 x2"]  # once
        await h.ask("a", num_ctx=512)  # another num_ctx: the runner is replaced
        assert h.log == ["load a.gguf ctx=256 x2", "close a.gguf", "load a.gguf ctx=512 x2"]
        assert [r.spec.num_ctx for r in h.scheduler.loaded()] == [512]
        await h.scheduler.close()
        assert h.engines[-1].closed

    run(go)


def test_a_reload_waits_for_the_requests_on_the_old_runner(tmp_path: Path) -> None:
    h = Harness(tmp_path, num_parallel=2)

    async def go() -> None:
        await h.ask("a")
        old = h.engines[0]
        old.free_running = False
        slow = asyncio.create_task(h.ask("a", tokens=2))
        await asyncio.sleep(0.05)
        reload = asyncio.create_task(h.ask("a", num_ctx=1024))
        await asyncio.sleep(0.05)
        assert not old.closed and len(h.engines) == 1  # not while a request uses it
        old.tick.set()
        await asyncio.sleep(0.01)
        old.tick.set()
        assert await slow == "t0 t1 "
        await reload
        assert old.closed and h.engines[1].spec.num_ctx == 1024

    run(go)


def test_least_recently_used_idle_model_is_evicted(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_loaded_models=2, num_parallel=1)

    async def go() -> None:
        await h.ask("a")
        await h.ask("b")
        await h.ask("a")  # a is now the newest
        await h.ask("c")
        assert sorted(r.model for r in h.scheduler.loaded()) == ["a", "c"]
        assert "close b.gguf" in h.log and "close a.gguf" not in h.log

    run(go)


def test_the_memory_budget_counts_every_slot(tmp_path: Path) -> None:
    # Room for one 1 MiB model with 4 contexts of 256 tokens (16 MiB of KV each), not two.
    budget = estimate_size(LoadSpec(str(tmp_path / "a.gguf"), num_ctx=256, num_parallel=4)) + MiB
    h = Harness(tmp_path, num_parallel=4, max_memory=budget)

    async def go() -> None:
        await h.ask("a")
        assert h.scheduler.loaded()[0].size == MiB + 4 * 256 * KV_PER_TOKEN
        await h.ask("b")  # a is idle: it makes room
        assert [r.model for r in h.scheduler.loaded()] == ["b"]
        await h.ask("big", num_ctx=8192)  # bigger than the whole budget: loads alone
        assert [r.model for r in h.scheduler.loaded()] == ["big"]

    run(go)


def test_parallel_slots_default_to_four_where_memory_allows() -> None:
    spec = LoadSpec("/nonexistent.gguf", num_ctx=4096)  # no weights: only the KV counts
    four = 4 * 4096 * KV_PER_TOKEN
    assert parallel_for(spec, 0, four) == AUTO_PARALLEL == 4
    assert parallel_for(spec, 0, four - 1) == 1  # four contexts do not fit: one
    assert parallel_for(spec, 3, 1) == 3  # HANGAR_NUM_PARALLEL wins
    assert parallel_for(dataclasses.replace(spec, embedding=True), 8, four) == 1
    assert estimate_size(dataclasses.replace(spec, num_parallel=4)) == four


def test_a_runner_serves_num_parallel_requests_at_once_and_queues_the_rest(tmp_path: Path) -> None:
    h = Harness(tmp_path, num_parallel=3)

    async def go() -> None:
        await h.ask("a", tokens=1)
        engine = h.engines[0]
        engine.free_running = False
        tasks = [asyncio.create_task(h.ask("a", tokens=1)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert engine.active == 3 and h.scheduler.waiting == 2
        for _ in range(20):
            engine.tick.set()
            await asyncio.sleep(0.01)
        assert [await t for t in tasks] == ["t0 "] * 5
        assert engine.most_active == 3 and h.scheduler.waiting == 0

    run(go)


def test_a_full_queue_refuses_the_next_request(tmp_path: Path) -> None:
    h = Harness(tmp_path, num_parallel=1, max_queue=1)

    async def go() -> None:
        await h.ask("a", tokens=1)
        engine = h.engines[0]
        engine.free_running = False
        running = asyncio.create_task(h.ask("a", tokens=1))
        await asyncio.sleep(0.02)
        queued = asyncio.create_task(h.ask("a", tokens=1))
        await asyncio.sleep(0.02)
        assert h.scheduler.waiting == 1
        with pytest.raises(Busy, match="maximum pending requests exceeded"):
            await h.ask("a")
        for _ in range(10):
            engine.tick.set()
            await asyncio.sleep(0.01)
        assert await running == "t0 " and await queued == "t0 "
        assert h.scheduler.waiting == 0

    run(go)


def test_keep_alive_zero_unloads_after_the_request_and_a_timer_later(tmp_path: Path) -> None:
    h = Harness(tmp_path, num_parallel=1)

    async def go() -> None:
        await h.ask("a", keep_alive=0)
        assert h.scheduler.loaded() == [] and h.engines[0].closed
        await h.ask("a", keep_alive=0.05)
        runner = h.scheduler.loaded()[0]
        assert runner.expires_at is not None
        await asyncio.sleep(0.2)
        assert h.scheduler.loaded() == [] and h.engines[1].closed
        await h.ask("a", keep_alive=60)
        assert await h.scheduler.unload("a") and h.scheduler.loaded() == []
        assert not await h.scheduler.unload("a")

    run(go)


def test_a_failed_load_is_reported_and_leaves_nothing_loaded(tmp_path: Path) -> None:
    h = Harness(tmp_path, num_parallel=1)
    h.failing.add("b")

    async def go() -> None:
        await h.ask("a")
        with pytest.raises(EngineError, match="broken"):
            await h.ask("b")
        assert [r.model for r in h.scheduler.loaded()] == ["a"]
        assert h.engines[1].closed and h.scheduler.waiting == 0
        assert await h.ask("a") == "t0 t1 t2 "  # the scheduler still works

    run(go)


def test_leaving_a_stream_early_cancels_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, num_parallel=1)

    async def go() -> None:
        cancel = threading.Event()
        async with h.scheduler.use("a", h.spec("a"), None) as runner:
            stream = runner.engine.generate([1], Sampling(num_predict=100), cancel)
            async for event in stream:
                assert isinstance(event, TokenEvent)
                break
            await stream.aclose()  # type: ignore[attr-defined]
        assert cancel.is_set() and h.engines[0].active == 0

    run(go)
