"""Per-address limits: a token bucket for requests to ``/token`` and ``/hangar/v1``, and a throttle
that keeps refusals from flooding the audit table.

Both live in one worker's memory. With ``--workers N`` an address gets up to N times the limit
(the kernel spreads connections over the workers), and a restart forgets everything. That is
enough to blunt a brute force or a flood from one address; a limit shared by every worker and
replica belongs in the reverse proxy in front of them."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# How many addresses (or keys) each structure remembers: past this the least recently seen go,
# so a flood from many addresses costs bounded memory (and at worst forgets a bucket).
MAX_KEYS = 50_000

# Refusals written to the audit log per minute per (address, action); the next one writes a
# summary row, and the rest of that minute is only counted (reported with the next row written).
AUDIT_REFUSALS_PER_MINUTE = 60


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute on average, bursts of as many.
    ``per_minute <= 0`` turns it off."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def take(self, key: str) -> float:
        """0 when the request may go ahead (a token is taken), else the seconds until it may."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(self.capacity, now)
        else:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        self._buckets[key] = bucket  # most recently used last
        while len(self._buckets) > MAX_KEYS:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` value for a wait: whole seconds, at least 1."""
        return str(max(1, math.ceil(wait)))


@dataclass
class _Window:
    start: float
    written: int = 0
    suppressed: int = 0


class AuditThrottle:
    """Decides whether a refusal becomes an audit row: at most ``per_minute`` a minute for each
    (remote address, action), then one summary row, then only a count until the minute ends."""

    def __init__(
        self, per_minute: int = AUDIT_REFUSALS_PER_MINUTE, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()

    def admit(self, remote: str, action: str) -> dict[str, Any] | None:
        """None: do not write this refusal. Otherwise the details to add to its row (empty for
        an ordinary row)."""
        now = self._clock()
        key = (remote, action)
        window = self._windows.pop(key, None)
        extra: dict[str, Any] = {}
        if window is None or now - window.start >= 60.0:
            if window is not None and window.suppressed:
                extra["unrecorded_before"] = window.suppressed  # refusals the last window only counted
            window = _Window(now)
        self._windows[key] = window
        while len(self._windows) > MAX_KEYS:
            self._windows.popitem(last=False)
        window.written += 1
        if window.written <= self.per_minute:
            return extra
        if window.written == self.per_minute + 1:
            extra["throttled"] = (
                f"more than {self.per_minute} refusals of {action!r} a minute from this address: "
                "the rest of this minute is counted, not recorded"
            )
            return extra
        window.suppressed += 1
        return None


class TtlCache:
    """A small map whose entries vanish ``ttl`` seconds after they were set (for answers that may
    be a few seconds stale, such as whether a signed URL's holder may still read a repository)."""

    def __init__(self, ttl: float, max_size: int = 10_000, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._clock = clock
        self._items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._items[key]
            return None
        return item[1]

    def set(self, key: Any, value: Any) -> None:
        if len(self._items) >= self.max_size:
            self._items.clear()  # rare; cheaper than an LRU for a cache this short-lived
        self._items[key] = (self._clock() + self.ttl, value)
