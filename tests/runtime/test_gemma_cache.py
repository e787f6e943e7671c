"""Prompt caching on a real sliding-window model: Gemma 3 270M (``bench.common.gemma_gguf``; its
sliding layers see 512 tokens), where the tiny test models have no window. A prefix longer than the
window, served from a slot's own cells or copied from another slot's, gives the answer a cold
evaluation of the same prompt gives (compared by its start: llama.cpp is not bit-stable across
batch shapes), and only the new tokens are evaluated."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import RuntimeProcess, wait_until

GREEDY = {"temperature": 0, "num_ctx": 4096, "num_thread": 2, "seed": 1}
START = 3  # reply words compared (raw prompts: Ollama returns no ``context`` for them)
# Plain prose, about 800 tokens: longer than the sliding window.
TEXT = " ".join(
    f"Section {i}: the harbour master counted {i * 7} boats, noted the tide at {i % 12} o'clock, "
    f"and wrote that the {['north', 'south', 'east', 'west'][i % 4]} pier needed paint."
    for i in range(24)
)


@pytest.fixture(scope="module")
def gemma_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.common import gemma_gguf
    from client.config import load
    from client.store import Store
    from formats.gguf import read_header
    from tests.tinymodels import add_model

    gguf = gemma_gguf()
    window = read_header(gguf).metadata["gemma3.attention.sliding_window"]
    assert window == 512  # the premise: a sliding-window model
    home = tmp_path_factory.mktemp("gemma-home")
    add_model(Store(load({"HANGAR_HOME": str(home)}).models), "gemma", gguf)
    return home


@pytest.fixture(scope="module")
def cached(gemma_home: Path) -> Iterator[RuntimeProcess]:
    proc = RuntimeProcess(gemma_home, HANGAR_NUM_PARALLEL="2").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def cold(gemma_home: Path) -> Iterator[RuntimeProcess]:
    """Answers from cold cells: the model is unloaded after every request (``keep_alive: 0``)."""
    proc = RuntimeProcess(gemma_home, HANGAR_NUM_PARALLEL="1").start()
    yield proc
    proc.stop()


def generate(proc: RuntimeProcess, prompt: str, num_predict: int = 12, **extra: Any) -> dict[str, Any]:
    body = {"model": "gemma", "prompt": prompt, "raw": True, "stream": False,
            "options": {**GREEDY, "num_predict": num_predict}, **extra}  # fmt: skip
    r = httpx.post(proc.url + "/api/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def start(answer: dict[str, Any]) -> list[str]:
    """The reply's first ``START`` words."""
    words: list[str] = answer["response"].split()[:START]
    assert len(words) == START, answer["response"]
    return words


def test_a_prefix_longer_than_the_window_is_reused_and_answers_as_a_cold_one(
    cached: RuntimeProcess, cold: RuntimeProcess
) -> None:
    first = generate(cached, TEXT + "\nQuestion: how many boats in section 3?\nAnswer:")
    assert first["prompt_eval_count"] > 700  # all of it evaluated, well past the window
    prompt = TEXT + "\nQuestion: which pier needed paint in section 5?\nAnswer:"
    second = generate(cached, prompt)
    assert second["prompt_eval_count"] < 20, second["prompt_eval_count"]  # only the new question
    reference = generate(cold, prompt, keep_alive=0)
    assert reference["prompt_eval_count"] > 700  # cold: all of it
    assert start(second) == start(reference)


def test_a_long_shared_prefix_copied_from_a_busy_slot_answers_as_a_cold_one(
    cached: RuntimeProcess, cold: RuntimeProcess
) -> None:
    shared = "Notes. " + TEXT
    times: list[float] = []
    done: list[dict[str, Any]] = []

    def decode() -> None:  # the first user, still decoding while the second arrives
        body = {"model": "gemma", "prompt": shared + "\nSummary:", "raw": True, "stream": True,
                "options": {**GREEDY, "num_predict": 400}}  # fmt: skip
        with httpx.stream("POST", cached.url + "/api/generate", json=body, timeout=300) as r:
            for line in r.iter_lines():
                times.append(time.monotonic())
                if '"done":true' in line.replace(" ", ""):
                    done.append({})

    thread = threading.Thread(target=decode, daemon=True)
    thread.start()
    wait_until(lambda: len(times) > 3, 120, "the first request to be decoding")
    prompt = shared + "\nQuestion: what was counted?\nAnswer:"
    second = generate(cached, prompt)
    assert not done, "the first request ended before the second was answered"
    assert second["prompt_eval_count"] < 20, second["prompt_eval_count"]  # copied, not evaluated
    reference = generate(cold, prompt, keep_alive=0)
    assert start(second) == start(reference)
    thread.join(300)
