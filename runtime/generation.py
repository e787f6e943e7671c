"""What a generation request is and what it yields, shared by the engines: the sampling options,
the token and done events, the errors, and how a prompt is cut to fit the context (§8.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from formats.options import DEFAULTS


@dataclass
class Sampling:
    temperature: float = DEFAULTS["temperature"]
    top_k: int = DEFAULTS["top_k"]
    top_p: float = DEFAULTS["top_p"]
    min_p: float = DEFAULTS["min_p"]
    typical_p: float = DEFAULTS["typical_p"]
    repeat_penalty: float = DEFAULTS["repeat_penalty"]
    repeat_last_n: int = DEFAULTS["repeat_last_n"]
    presence_penalty: float = DEFAULTS["presence_penalty"]
    frequency_penalty: float = DEFAULTS["frequency_penalty"]
    seed: int = DEFAULTS["seed"]
    num_predict: int = DEFAULTS["num_predict"]
    num_keep: int = DEFAULTS["num_keep"]
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool = True  # cut a prompt longer than the context (else BadInput)
    shift: bool = True  # shift the context when the reply fills it (else stop: "length")
    fail_after: int = -1  # tests only (HANGAR_TEST_FAIL_AFTER): raise EngineError after this many tokens


@dataclass
class TokenEvent:
    text: str
    logprob: dict[str, Any] | None = None


@dataclass
class DoneEvent:
    reason: str  # "stop" | "length" | "cancel"
    prompt_tokens: int  # the whole prompt, cached tokens included (OpenAI's usage.prompt_tokens)
    eval_tokens: int
    prompt_ns: int
    eval_ns: int
    context: list[int]
    cached_tokens: int = 0  # of those, the ones reused from the cache (the conversation so far)

    @property
    def evaluated_tokens(self) -> int:
        """The prompt tokens evaluated for this request, those the cache did not supply (Ollama's
        ``prompt_eval_count``, so that with ``prompt_eval_duration`` it is a true rate, as
        llama.cpp's server counts them). At least 1 for a prompt that was all cached: a runner
        evaluates its last token again for the logits; Hangar keeps those logits instead (so the
        same request again answers the same) and counts that token as a runner would."""
        return min(self.prompt_tokens, max(1, self.prompt_tokens - self.cached_tokens))


@dataclass
class MediaPrompt:
    """Prompt text with one image marker (``Engine.image_marker``) per image, in order."""

    text: str
    images: list[bytes]


class EngineError(RuntimeError):
    pass


class BadInput(EngineError):
    """The request, not the engine, is at fault (an unreadable image, a token out of range)."""


TOO_LONG = "the input length exceeds the context length"  # Ollama's words
REPLY_ROOM = 64  # tokens a cut prompt leaves free for the reply (fewer in a small context)


def keep_count(num_keep: int, n_ctx: int) -> int:
    """Tokens at the start of the context that truncation and shifting never drop (as Ollama:
    negative keeps the whole prompt; at least one token must stay droppable)."""
    return max(0, n_ctx - 1 if num_keep < 0 else min(num_keep, n_ctx - 1))


def fit(prompt: list[int], n_ctx: int, keep: int, num_predict: int = -1) -> list[int]:
    """The prompt cut to leave room for the reply: its first ``keep`` tokens and its newest ones.

    The room is ``REPLY_ROOM`` tokens (or ``num_predict`` when smaller), at most a quarter of the
    context, at least one token; ``keep`` gives way when it would leave none of the prompt's end
    (num_keep 4 in a context of 4). A prompt that fits the context but not the room is left whole:
    the reply then shifts the context."""
    if len(prompt) <= n_ctx - 1:
        return prompt
    want = REPLY_ROOM if num_predict < 0 else max(1, min(num_predict, REPLY_ROOM))
    room = max(1, min(want, n_ctx // 4))
    keep = min(keep, n_ctx - room - 1)
    return prompt[:keep] + prompt[len(prompt) - (n_ctx - room - keep) :]


def find_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def stop_prefix_len(text: str, stops: list[str]) -> int:
    """How much of the end of ``text`` could be the start of a stop sequence (held back)."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
