"""Durations and sizes as people and Ollama's API write them: one grammar for each, used by every
flag, setting and request field that takes one.

**Durations** are terms of a number and a unit, ``ns us µs ms s m h`` (and ``d`` in Hangar's own
flags), added up: ``90s``, ``15m``, ``1h30m``, ``-1m``. Two dialects share the terms:

- :func:`parse_go_duration` is Go's ``time.ParseDuration``, for Ollama's wire fields
  (``keep_alive``): no ``d``, and a bare number only when it is ``0``.
- :func:`parse_duration` is for Hangar's flags and settings (``--grace 1h``, ``--expires 7d``,
  ``HANGAR_REGISTRY_UPLOAD_MAX_AGE``): ``d`` is a day, and a bare number is seconds.

**Sizes** are a number and an optional unit, decimal (``K``/``KB``, ``M``/``MB``, ``G``/``GB``) or
binary (``KiB``, ``MiB``, ``GiB``), any case: ``1048576``, ``64MiB``, ``1.5G``."""

from __future__ import annotations

import math
import re

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_FLAG_UNITS = {**_GO_UNITS, "d": 86400.0}
_TERM_RE = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h|d)")
_NUMBER_RE = re.compile(r"[0-9]*\.?[0-9]+")


def _terms(text: str, units: dict[str, float]) -> float | None:
    """The sum of ``text``'s terms (an optional sign first), or None when it is not all terms."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s[1:] if s[:1] in "+-" else s
    pos, total = 0, 0.0
    while pos < len(s):
        m = _TERM_RE.match(s, pos)
        if m is None or m.group(2) not in units:
            return None
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    return sign * total if pos else None


def parse_go_duration(text: str) -> float:
    """Seconds from a Go duration string: ``5m``, ``1h30m``, ``-1m``, ``0``."""
    if text.strip().lstrip("+-") == "0":
        return 0.0
    seconds = _terms(text, _GO_UNITS)
    if seconds is None:
        raise ValueError(f"time: invalid duration {text!r}")
    return seconds


def parse_duration(text: str) -> float:
    """Seconds from a flag or setting: ``90`` (seconds), ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``."""
    if _NUMBER_RE.fullmatch(text.strip().lstrip("+-")):
        return float(text)
    seconds = _terms(text, _FLAG_UNITS)
    if seconds is None:
        raise ValueError(f"invalid duration {text!r} (examples: 90, 90s, 15m, 2h, 1d)")
    return seconds


def format_duration(seconds: float) -> str:
    """Go's time.Duration.String for whole seconds and above (``5m0s``, ``1h0m0s``); ``-1`` for ever."""
    if math.isinf(seconds):
        return "-1"
    total = int(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


_SIZE_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 10**6, "MB": 10**6, "MIB": 2**20,
               "G": 10**9, "GB": 10**9, "GIB": 2**30}  # fmt: skip


def parse_size(text: str) -> int:
    """Bytes from ``1048576``, ``64MiB``, ``50MB``, ``1.5G``; ValueError unless positive."""
    s = text.strip().upper().replace(" ", "")
    number = s.rstrip("KMGIB")
    unit = s[len(number) :]
    if unit not in _SIZE_UNITS or not number:
        raise ValueError(f"invalid size {text!r} (examples: 1048576, 64MiB, 50MB)")
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise ValueError(f"invalid size {text!r}") from None
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return int(value)
