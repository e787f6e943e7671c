"""Cleaning up: abandoned upload sessions, and blobs nothing uses any more.

Both are a plan (what would go) followed by its execution, so ``--dry-run`` is the plan alone.
Online and safe beside running workers: an upload is purged only after ``max_age`` without a
write, and a blob only if it is older than the grace period and still unreferenced at the moment
its row is deleted (the delete re-checks in the same statement)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

import anyio
from starlette.concurrency import run_in_threadpool

from formats.digest import Digest
from registry.accounts import Accounts
from registry.db import utcnow
from registry.meta import Metadata
from registry.storage import VerifiedStore

log = logging.getLogger("hangar.registry.gc")


@dataclass
class Plan:
    uploads: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)


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
    return Plan(blobs=await run_in_threadpool(meta.unreferenced_blobs, cutoff))


async def execute(meta: Metadata, store: VerifiedStore, plan: Plan) -> Plan:
    """Carry out a plan; returns what was actually removed."""
    done = Plan()
    for upload_id in plan.uploads:
        await store.abort_upload(upload_id)
        await run_in_threadpool(meta.delete_upload, upload_id)
        done.uploads.append(upload_id)
    for digest in plan.blobs:
        # An upload of the same bytes may be publishing them right now: it rewrites the blob
        # (``BlobStore.delete``) before it links the row again, so bytes written since this
        # moment stay (without a row; the upload's link restores it).
        now = time.time()
        if await run_in_threadpool(meta.forget_blob, digest):
            if await store.delete(Digest.parse(digest), written_before=now):
                done.blobs.append(digest)
            else:
                log.info("kept blob %s: written again while it was being collected", digest)
    return done


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
