"""Telling a full disk from other failures, so that a push that runs out of space answers
``507 Insufficient Storage`` with a message an operator can act on, instead of a bare 500.

A full disk shows up in three shapes: ``OSError`` ENOSPC (or EDQUOT, a quota) from the blob store's
writes, SQLite's ``SQLITE_FULL`` ("database or disk is full") when the database shares the data
directory, and PostgreSQL's ``disk_full`` (SQLSTATE 53100) on its own disk. Whatever was being
written is then abandoned as it would be for any failed request: an upload chunk with a declared
length is truncated back (``registry.storage.filesystem``), a monolithic upload is discarded, a
database transaction rolls back; so nothing partial becomes visible, and reads go on."""

from __future__ import annotations

import errno

from formats.errorcodes import DistributionError

INSUFFICIENT_STORAGE = 507
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> str | None:
    """What ran out of space, when ``exc`` (or an exception it was raised from) is a full disk;
    None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            where = f" ({current.filename})" if current.filename else ""
            return f"the blob store's disk{where}: {current.strerror or 'no space left on device'}"
        text = str(current)
        if "database or disk is full" in text:  # SQLite: SQLITE_FULL
            return "the database's disk (SQLite: database or disk is full)"
        if getattr(current, "sqlstate", None) == "53100" or "could not extend file" in text:  # PostgreSQL
            return "the database's disk (PostgreSQL: disk full)"
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    return None


def insufficient_storage(what: str) -> DistributionError:
    return DistributionError(
        "UNKNOWN",
        f"the registry is out of storage space ({what}); nothing was stored, retry once space is freed",
        status=INSUFFICIENT_STORAGE,
        headers={"Retry-After": "60"},
    )
