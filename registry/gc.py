"""Cleaning up: abandoned upload sessions, and blobs nothing uses any more.

Both are a plan (what would go) followed by its execution, so ``--dry-run`` is the plan alone.
Online and safe beside running workers and replicas: an upload is purged only after ``max_age``
without a write, and a blob only if it is older than the grace period and still unused when gc
takes its row.

Uploads and gc take turns on a blob's bytes through its database row (``registry.meta``):

- an upload whose bytes are verified claims the row before it publishes them (``claimer``, made
  if missing); the claim holds the row for ``PUBLISH_HOLD`` and names its generation. Linking the
  bytes into the repository checks that generation in the same transaction and ends the hold; a
  publish that fails releases it (``releaser``). Bytes already in the store (the mirror's) are
  linked under a claim too (``link_stored``);
- gc takes a row only if nobody holds it and nothing links or names it (checked with the row
  locked), gives it a new generation and holds it, renewing the hold every ``COLLECT_HOLD``/3
  while it deletes the bytes; then deletes the row (if still its generation);
- an upload that finds the row held waits (a publish or a delete takes moments); a link that finds
  another generation fails (BlobBeingCollected, 503) rather than naming bytes gc deleted.

So gc never deletes bytes an upload is publishing or has published and is about to link, and an
upload never publishes bytes gc is deleting. Two uploads of one digest also take turns: the second
finds the first's blob in the store and drops its own bytes (on S3, none are left over). A hold
ends by itself only when its holder is gone (an upload killed mid-publish: the next one takes a new
generation; a gc killed mid-delete) or, for an upload, publishes for longer than its hold (its link
then fails, never the other way round); gc's runs out only if its process stops (not killed) for
longer than ``COLLECT_HOLD`` in the middle of a delete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from starlette.concurrency import run_in_threadpool

from formats.digest import Digest
from registry.accounts import Accounts
from registry.db import utcnow
from registry.meta import Metadata
from registry.renewal import renewed
from registry.storage import BlobBeingCollected, BlobInfo, BlobNotFound, Claim, Release, VerifiedStore

log = logging.getLogger("hangar.registry.gc")

# An upload's claim: publishing is a few requests (on S3, completing the parts; the bytes were
# verified before the claim). A registry killed mid-publish leaves it behind, so it is short.
PUBLISH_HOLD = 15.0
COLLECT_HOLD = 30.0  # gc's, renewed while it deletes: a gc killed meanwhile blocks pushes this long
# How long a commit waits for a held row: past a dead upload's hold, and within clients' read
# timeouts (hangar's is 30 s; 60 s here made a push after a registry restart time out, found by
# the soak). A row still held then (a gc killed mid-delete) answers 503 with Retry-After.
CLAIM_WAIT = PUBLISH_HOLD + 5.0
CLAIM_POLL = 0.1


@dataclass
class Plan:
    uploads: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    # Blobs published since are kept (a plan made without a grace period: when it was made).
    cutoff: dt.datetime = field(default_factory=utcnow)


async def plan_uploads(meta: Metadata, store: VerifiedStore, max_age: float) -> Plan:
    cutoff = utcnow() - dt.timedelta(seconds=max_age)
    plan = Plan(uploads=await run_in_threadpool(meta.stale_uploads, cutoff))
    known = await run_in_threadpool(meta.upload_ids)
    async for upload in store.list_uploads():
        # Data whose session row never got written (a crash between the two) or is gone.
        if upload.upload_id not in known and upload.modified < time.time() - max_age:
            plan.uploads.append(upload.upload_id)
    return plan


async def plan_blobs(meta: Metadata, grace: float) -> Plan:
    cutoff = utcnow() - dt.timedelta(seconds=grace)
    return Plan(blobs=await run_in_threadpool(meta.unreferenced_blobs, cutoff), cutoff=cutoff)


# Called for each blob after gc took its row, before its bytes go (tests meet a push there).
Pause = Callable[[str], Awaitable[None]]


async def collect(
    meta: Metadata, store: VerifiedStore, digest: str, cutoff: dt.datetime, pause: Pause | None = None
) -> bool:
    """Delete one blob's bytes and row if it is unused and older than ``cutoff``; False if kept."""
    generation = await run_in_threadpool(meta.collect_blob, digest, cutoff, COLLECT_HOLD)
    if generation is None:
        return False
    async with _holding(meta, digest, generation):
        if pause is not None:
            await pause(digest)
        await store.delete(Digest.parse(digest))
    if not await run_in_threadpool(meta.drop_blob, digest, generation):
        log.warning("blob %s: gc's hold ran out before its bytes were deleted; an upload publishes them again", digest)
    return True


async def execute(meta: Metadata, store: VerifiedStore, plan: Plan, pause: Pause | None = None) -> Plan:
    """Carry out a plan; returns what was actually removed."""
    done = Plan(cutoff=plan.cutoff)
    for upload_id in plan.uploads:
        await store.abort_upload(upload_id)
        await run_in_threadpool(meta.delete_upload, upload_id)
        done.uploads.append(upload_id)
    for digest in plan.blobs:
        if await collect(meta, store, digest, plan.cutoff, pause):
            done.blobs.append(digest)
        else:
            log.info("kept blob %s: in use again since the plan", digest)
    return done


def _holding(meta: Metadata, digest: str, generation: str) -> contextlib.AbstractAsyncContextManager[None]:
    """Keep gc's hold on a row for as long as it works on the blob, however slow the store."""

    async def renew() -> bool:
        return await run_in_threadpool(meta.hold_blob, digest, generation, COLLECT_HOLD)

    return renewed(renew, COLLECT_HOLD / 3)


def take_turns(store: VerifiedStore, meta: Metadata) -> None:
    """Wire a store's publishes to claim their blob's row first (and release it if they fail)."""
    store.claim = claimer(meta)
    store.release = releaser(meta)


def claimer(meta: Metadata) -> Claim:
    """The claim ``VerifiedStore`` makes before it publishes an upload's bytes (see above)."""

    async def claim(digest: Digest, size: int) -> str:
        deadline = time.monotonic() + CLAIM_WAIT
        while (generation := await run_in_threadpool(meta.claim_blob, digest, size, PUBLISH_HOLD)) is None:
            if time.monotonic() > deadline:
                raise BlobBeingCollected(f"{digest} is still being deleted by gc; try again later")
            await anyio.sleep(CLAIM_POLL)
        return generation

    return claim


def releaser(meta: Metadata) -> Release:
    """The release ``VerifiedStore`` makes of a claim whose bytes it did not publish."""

    async def release(digest: Digest, generation: str, present: bool) -> None:
        await run_in_threadpool(meta.release_blob, digest, generation, present)

    return release


async def link_stored(meta: Metadata, store: VerifiedStore, name: str, digest: Digest) -> BlobInfo | None:
    """Link bytes the store already has (another repository's; another worker's download) into
    ``name``, taking a turn on the row as an upload does, so that gc cannot delete them between the
    look and the link. None if the store does not have them (or gc deleted them meanwhile)."""
    try:
        info = await store.stat(digest)
    except BlobNotFound:
        return None
    generation = await store.claimed(digest, info.size)
    try:
        info = await store.stat(digest)  # still there once claimed: gc cannot take them now
    except BlobNotFound:
        await store.release_claim(digest, generation)
        return None
    info = dataclasses.replace(info, generation=generation)
    await run_in_threadpool(meta.link_blob, name, info)
    return info


async def purge_uploads_forever(meta: Metadata, accounts: Accounts, store: VerifiedStore, max_age: float) -> None:
    """The background loop every worker runs (idempotent, so several may run at once): abandoned
    uploads, and nonces whose timestamp window has closed."""
    interval = min(max_age / 4, 600.0)
    while True:
        try:
            done = await execute(meta, store, await plan_uploads(meta, store, max_age))
            if done.uploads:
                log.info("purged %d abandoned upload(s)", len(done.uploads))
            await run_in_threadpool(accounts.purge_nonces)
        except Exception:  # keep purging later; never take the worker down
            log.exception("upload purge failed")
        await anyio.sleep(interval)
