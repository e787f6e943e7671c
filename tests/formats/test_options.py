"""Model options, Modelfile parameters and keep_alive."""

from __future__ import annotations

import math

import pytest

from formats.options import (
    OptionError,
    parse_keep_alive,
    parse_options,
    parse_parameter,
)


def test_options_are_typed_and_unknown_keys_warned() -> None:
    options, warnings = parse_options({"num_ctx": 2048.0, "temperature": 1, "stop": "x", "bogus": 1, "seed": None})
    assert options == {"num_ctx": 2048, "temperature": 1.0, "stop": ["x"]}
    assert isinstance(options["num_ctx"], int) and isinstance(options["temperature"], float)
    assert warnings == ["invalid option provided: bogus"]
    assert parse_options(None) == ({}, [])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"num_ctx": 1.5}, "must be an integer"),
        ({"num_ctx": True}, "must be an integer"),
        ({"temperature": "hot"}, "must be a number"),
        ({"use_mmap": 1}, "must be true or false"),
        ({"stop": [1]}, "string or a list of strings"),
    ],
)
def test_bad_option_values_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        parse_options(raw)


def test_options_must_be_an_object() -> None:
    with pytest.raises(OptionError, match="must be an object"):
        parse_options(["num_ctx"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("num_ctx", " 4096 ", 4096),
        ("temperature", "0.7", 0.7),
        ("use_mmap", "false", False),
        ("use_mmap", "T", True),
        ("stop", "<|end|>", "<|end|>"),
        ("mirostat", "2", None),  # deprecated: accepted and dropped
    ],
)
def test_modelfile_parameters(name: str, text: str, expected: object) -> None:
    assert parse_parameter(name, text) == expected


def test_modelfile_parameter_errors_name_the_parameter() -> None:
    with pytest.raises(OptionError, match=r"invalid int value \[big\] for parameter 'num_ctx'"):
        parse_parameter("num_ctx", "big")
    with pytest.raises(OptionError, match="unknown parameter 'colour'"):
        parse_parameter("colour", "red")


def test_keep_alive_values() -> None:
    assert parse_keep_alive(None) is None
    assert parse_keep_alive(30) == 30.0
    assert parse_keep_alive("10m") == 600.0
    assert parse_keep_alive(0) == 0.0
    assert parse_keep_alive(-1) == math.inf
    assert parse_keep_alive("-1s") == math.inf
    with pytest.raises(OptionError, match="invalid duration"):
        parse_keep_alive("1d")
    for bad in (True, [5], {"m": 5}):
        with pytest.raises(OptionError, match="keep_alive"):
            parse_keep_alive(bad)
