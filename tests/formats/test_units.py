"""Durations (Go's grammar and the flags') and sizes: formats/units.py."""

from __future__ import annotations

import math

import pytest

from formats.units import format_duration, parse_duration, parse_go_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("-1m", -60.0), ("0", 0.0), ("1.5s", 1.5), ("250ms", 0.25), ("2h", 7200.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "m", "1d"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), (" 90s ", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0), ("1.5h", 5400.0),
     ("1h30m", 5400.0), ("0", 0.0), ("-5m", -300.0)],
)  # fmt: skip
def test_flag_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "m", "1w"])
def test_bad_flag_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_durations_print_like_go() -> None:
    assert format_duration(300) == "5m0s"
    assert format_duration(3600) == "1h0m0s"
    assert format_duration(59) == "59s"
    assert format_duration(math.inf) == "-1"


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1048576), ("64MiB", 64 * 2**20), ("50MB", 50 * 10**6), ("1.5G", 1_500_000_000), ("2kib", 2048)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "12XB", "0", "-1"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)
