"""A lease kept alive in the background while a block of work runs (an upload's writer lease,
gc's hold on a blob's row): renewed every so often until the renewal says it was lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable


@contextlib.asynccontextmanager
async def renewed(renew: Callable[[], Awaitable[bool]], every: float) -> AsyncIterator[None]:
    """Run the block with ``renew`` called every ``every`` seconds beside it; after a False (the
    lease is someone else's now) it is not called again, and the block goes on: what the lease
    guards is checked again where it matters (the caller's job)."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            if not await renew():
                return

    task = asyncio.ensure_future(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
