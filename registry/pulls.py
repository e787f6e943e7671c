"""Pull counts without a write per pull: each worker counts manifest GETs by tag in memory and adds
them to the ``pull_count`` table in one transaction every :data:`FLUSH_SECONDS` (and once more
when it stops). Several workers and replicas add to the same rows, so the counts are exact up to
what a killed worker had not written yet."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from starlette.concurrency import run_in_threadpool

from registry.meta import Metadata

log = logging.getLogger("hangar.registry")

FLUSH_SECONDS = 5.0
# Distinct (repository, tag) pairs kept between flushes; past it, new pairs wait for the next one.
MAX_PENDING = 100_000


class PullCounter:
    def __init__(self) -> None:
        self.pending: Counter[tuple[str, str]] = Counter()

    def add(self, repository: str, tag: str) -> None:
        key = (repository.lower(), tag.lower())
        if key in self.pending or len(self.pending) < MAX_PENDING:
            self.pending[key] += 1

    def take(self) -> dict[tuple[str, str], int]:
        taken, self.pending = dict(self.pending), Counter()
        return taken

    async def flush(self, meta: Metadata) -> None:
        taken = self.take()
        if not taken:
            return
        try:
            await run_in_threadpool(meta.add_pulls, taken)
        except Exception:  # the database is away: keep the counts for the next flush
            log.warning("could not write pull counts; will retry", exc_info=True)
            for key, n in taken.items():
                self.pending[key] += n


async def flush_pulls_forever(meta: Metadata, counter: PullCounter, every: float = FLUSH_SECONDS) -> None:
    try:
        while True:
            await asyncio.sleep(every)
            await counter.flush(meta)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(counter.flush(meta))
