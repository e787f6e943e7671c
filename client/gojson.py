"""JSON written byte for byte as Go's ``encoding/json`` Encoder writes it, for the files ``create``
makes (manifest, config, params and messages layers): the digest of a blob is its identity, so a
model created from the same inputs gets the same digests as Ollama gives it.

Go's Encoder writes compact JSON followed by ``\\n``; escapes ``<``, ``>`` and ``&`` (HTML-safe, its
default), U+2028 and U+2029, and control characters (``\\b \\f \\n \\r \\t`` short, others as
``\\u00XX``), and leaves other non-ASCII characters as UTF-8; prints a float64 with the fewest
digits that read back to it, in plain notation unless it is below 1e-6 or at least 1e21
(``1``, ``0.7``, ``0.00001``, ``1e-7``, ``1e+21``). Object keys come out in the order given: a Go
struct's fields in their declared order, a Go map's keys sorted (callers sort those)."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def dumps(value: Any) -> bytes:
    """``value`` (dicts, lists, str, int, float, bool, None) as Go's Encoder writes it, newline
    included. ValueError for NaN and infinities, which Go refuses to encode too."""
    return (_encode(value) + "\n").encode("utf-8")


def _encode(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(str(k))}:{_encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _string(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    for char, escaped in _GO_ESCAPES.items():
        if char in out:
            out = out.replace(char, escaped)
    # A lone surrogate (from a "\\ud800" escape) is what Go decodes to the replacement character.
    return _SURROGATE.sub("\ufffd", out)


def format_float(value: float) -> str:
    """A float64 as Go's encoding/json prints it."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {value}")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = repr(value)  # the shortest digits, in exponent form at these magnitudes
        mantissa, _, exponent = text.partition("e")
        sign = exponent[0] if exponent[0] in "+-" else "+"
        digits = exponent.lstrip("+-").lstrip("0") or "0"
        if mantissa.endswith(".0"):
            mantissa = mantissa[:-2]
        return f"{mantissa}e{sign}{digits.zfill(2) if sign == '+' else digits}"
    return format(Decimal(repr(value)).normalize(), "f")
