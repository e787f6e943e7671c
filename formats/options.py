"""Model options (Ollama's ``options`` / Modelfile ``PARAMETER`` / the params layer), their types
and defaults (the only copy), and ``keep_alive`` (its grammar: ``formats.units``). Shared by the runtime
and by ``hangar create``."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from typing import Any

from formats.units import parse_go_duration

# name -> type: int, float, bool or "list" (a list of strings)
OPTION_TYPES: dict[str, Any] = {
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": "list",
    "draft_num_predict": int,
}

# The default options: the only copy (the runtime's Sampling and LoadSpec take theirs from here).
# num_ctx is not among them: its default is the runtime's HANGAR_CONTEXT_LENGTH, this unless set.
DEFAULT_CONTEXT_LENGTH = 4096
DEFAULTS: dict[str, Any] = {
    "num_batch": 512,
    "num_gpu": -1,
    "num_thread": 0,
    "num_keep": 4,
    "seed": -1,
    "num_predict": -1,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "temperature": 0.8,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "stop": [],
}

# Options that shape the loaded model rather than one generation: changing them reloads it.
RUNNER_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"})

# Accepted in Modelfiles for compatibility, then dropped with a warning.
DEPRECATED = frozenset({
    "penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
    "mirostat", "mirostat_tau", "mirostat_eta",
})  # fmt: skip


class OptionError(ValueError):
    pass


def coerce(name: str, value: Any) -> Any:
    """A JSON value checked against the option's type (ints as floats are fine; not the reverse)."""
    kind = OPTION_TYPES[name]
    if kind == "list":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise OptionError(f"option {name!r} must be a string or a list of strings")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise OptionError(f"option {name!r} must be true or false")
    if kind is int:
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole:
            raise OptionError(f"option {name!r} must be an integer")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(f"option {name!r} must be a number")
    if not math.isfinite(value):  # Python's JSON reader takes Infinity and NaN; JSON has neither
        raise OptionError(f"option {name!r} must be a finite number")
    return float(value)


def parse_options(raw: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Typed options from a request; unknown keys are dropped and named in the returned warnings."""
    if raw is None:
        return {}, []
    if not isinstance(raw, Mapping):
        raise OptionError("options must be an object")
    options, warnings = {}, []
    for name, value in raw.items():
        if name not in OPTION_TYPES:
            warnings.append(f"invalid option provided: {name}")
            continue
        if value is None:
            continue
        options[name] = coerce(name, value)
    return options, warnings


def parse_parameter(name: str, text: str) -> Any:
    """A Modelfile ``PARAMETER name value`` typed (``stop`` gives one string to be accumulated),
    as strictly as Ollama's ``api.FormatParams``: names are case-sensitive, integers are Go's
    ``ParseInt`` (decimal, optional sign), booleans Go's ``ParseBool`` (``1 t T TRUE true True``
    and the same for false), floats Go's ``ParseFloat`` to float32 and kept as the float32 value
    (its shortest decimal form, as the Ollama CLI sends it). Infinities and NaN are refused: Ollama
    parses them but cannot then write them as JSON."""
    if name in DEPRECATED:
        return None
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise OptionError(f"unknown parameter '{name}'")
    if kind == "list":
        return text
    value = text.strip()
    invalid = OptionError(f"invalid {kind.__name__} value [{text}] for parameter '{name}'")
    if kind is bool:
        if value in _GO_TRUE:
            return True
        if value in _GO_FALSE:
            return False
        raise invalid
    if kind is int:
        if not _GO_INT_RE.fullmatch(value) or not -(2**63) <= int(value) < 2**63:
            raise invalid
        return int(value)
    if not _GO_FLOAT_RE.fullmatch(value):
        raise invalid
    number = float.fromhex(value) if "x" in value.lower() else float(value)
    try:
        return float32(number)
    except (OverflowError, ValueError):
        raise invalid from None


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_GO_INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_GO_FLOAT_RE = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+)",
    re.ASCII,
)


def float32(number: float) -> float:
    """``number`` rounded to float32, as the shortest decimal that reads back to that float32
    (how Go prints a float32); OverflowError beyond float32's range, ValueError for NaN."""
    if math.isnan(number) or math.isinf(number):
        raise ValueError("not a finite number")
    packed = struct.pack("<f", number)  # OverflowError when out of range
    single: float = struct.unpack("<f", packed)[0]
    for digits in range(1, 10):
        shortest = float(f"{single:.{digits}g}")
        if struct.pack("<f", shortest) == packed:
            return shortest
    return single


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep a model loaded: a number (seconds) or a duration string; negative means
    forever (``inf``), 0 means unload now; None when absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise OptionError("keep_alive must be a number of seconds or a duration such as 5m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_go_duration(value)
        except ValueError as e:
            raise OptionError(str(e)) from None
    else:
        raise OptionError("keep_alive must be a number of seconds or a duration such as 5m")
    return math.inf if seconds < 0 else seconds
