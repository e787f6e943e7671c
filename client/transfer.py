"""Pieces shared by pull and push: part planning, retry policy, rate limiting, writeback."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_ATTEMPTS = 6
STALL_SECONDS = 30.0


@dataclass
class Part:
    offset: int
    size: int
    completed: int = 0

    @property
    def done(self) -> bool:
        return self.completed >= self.size

    @property
    def next_byte(self) -> int:
        return self.offset + self.completed

    @property
    def last_byte(self) -> int:
        return self.offset + self.size - 1


def plan_parts(total: int, part_size: int) -> list[Part]:
    """Contiguous parts of at most ``part_size`` bytes covering ``total`` bytes."""
    if total == 0:
        return []
    return [Part(off, min(part_size, total - off)) for off in range(0, total, part_size)]


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): 1, 2, 4 … 32, with ±25% jitter."""
    base: float = min(2 ** (attempt - 1), 32)
    return base * random.uniform(0.75, 1.25)


class BandwidthLimiter:
    """A token bucket shared by every transfer of one operation (``--max-rate``)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self._allowance = float(rate or 0)
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def consume(self, n: int) -> None:
        if not self.rate:
            return
        async with self._lock:
            now = time.monotonic()
            self._allowance = min(float(self.rate), self._allowance + (now - self._last) * self.rate)
            self._last = now
            self._allowance -= n
            if self._allowance < 0:
                await asyncio.sleep(-self._allowance / self.rate)


class Throttle:
    """Calls ``fn`` at most every ``interval`` seconds (plus once when forced)."""

    def __init__(self, fn: Callable[[], None], interval: float = 0.1) -> None:
        self.fn = fn
        self.interval = interval
        self._last = 0.0

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self.fn()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting (Linux
    ``sync_file_range``), so the fsync before a download is published has little left to do.
    Elsewhere a no-op."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(length), _SYNC_FILE_RANGE_WRITE)


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = _load_sync_file_range() if sys.platform == "linux" else None
