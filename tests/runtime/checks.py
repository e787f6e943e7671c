"""Checks on model output shared by the runtime tests."""

from __future__ import annotations

import json
from typing import Any

_FILLERS = ("", "0", ":0", '"k":0', "e", "ue", "rue", "lse", "alse", "l", "ll", "ull")


def is_json_prefix(text: str) -> bool:
    """Whether ``text`` is the start of some JSON document: what a grammar-constrained generation
    cut short by ``num_predict`` or the context must be."""
    stack: list[str] = []
    in_string = escaped = False
    unicode_left = 0
    for ch in text:
        if in_string:
            if unicode_left:
                if ch not in "0123456789abcdefABCDEF":
                    return False
                unicode_left -= 1
            elif escaped:
                escaped = False
                if ch == "u":
                    unicode_left = 4
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append("]" if ch == "[" else "}")
        elif ch in "]}" and (not stack or stack.pop() != ch):
            return False
    close_string = ""
    if in_string:
        close_string = ("0" * unicode_left) + ("n" if escaped else "") + '"'
    closers = "".join(reversed(stack))
    for filler in _FILLERS:
        try:
            json.loads(text + close_string + filler + closers)
            return True
        except ValueError:
            continue
    return False


def prompt_size(answer: dict[str, Any]) -> int:
    """The whole prompt of an ``/api/generate`` answer in tokens, as evaluated (cut to fit): its
    ``context`` is that prompt and then the reply. (``prompt_eval_count`` counts only the prompt
    tokens the cache did not supply.)"""
    return len(answer["context"]) - int(answer.get("eval_count", 0))
