"""Runtime settings from HANGAR_* variables, read as Ollama reads its OLLAMA_* ones."""

from __future__ import annotations

import math
import os

import pytest

from runtime.config import load, parse_host
from runtime.engine import default_threads


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:11434", ("127.0.0.1", 11434)),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        (":8080", ("127.0.0.1", 8080)),
        ("http://example.lan", ("example.lan", 80)),
        ("https://example.lan/path", ("example.lan", 443)),
        ("[::1]:9000", ("::1", 9000)),
        ('"localhost:1234"', ("localhost", 1234)),
    ],
)
def test_host_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_host(text) == expected


def test_defaults() -> None:
    s = load({})
    assert (s.host, s.port, s.keep_alive, s.context_length) == ("127.0.0.1", 11434, 300.0, 4096)
    assert (s.max_loaded_models, s.max_queue, s.num_parallel, s.api_key) == (3, 512, 0, "")  # 0: automatic
    assert s.base_url == "http://127.0.0.1:11434"


@pytest.mark.parametrize(
    ("text", "seconds"), [("10m", 600.0), ("300", 300.0), ("-1", math.inf), ("-1m", math.inf), ("0", 0.0)]
)
def test_keep_alive_takes_durations_and_whole_seconds(text: str, seconds: float) -> None:
    assert load({"HANGAR_KEEP_ALIVE": text}).keep_alive == seconds


def test_bad_settings_name_the_problem() -> None:
    with pytest.raises(ValueError, match="runtime settings"):
        load({"HANGAR_KEEP_ALIVE": "soon"})
    with pytest.raises(ValueError, match="runtime settings"):
        load({"HANGAR_MAX_QUEUE": "many"})


def test_origins_and_api_key() -> None:
    s = load({"HANGAR_ORIGINS": "https://a.example, https://b.example", "HANGAR_API_KEY": " secret "})
    assert s.origins == ("https://a.example", "https://b.example") and s.api_key == "secret"


def test_default_threads_are_the_usable_physical_cores() -> None:
    usable = len(os.sched_getaffinity(0))
    assert 1 <= default_threads() <= usable
