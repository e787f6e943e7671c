"""The mirror's cache state in SQL: which repositories are cached copies of an upstream's (and
which upstream), when each was last used and whether it is pinned, and when each tag was last
checked against the upstream. Least-recently-used eviction of cached repositories works here.

A cached repository is an ordinary repository of ``registry.meta`` (its manifests, tags and
blob links are the registry's own rows, so pulls, the web site and gc see it as any other) that
also has a ``mirror_repository`` row. A repository without one is local: it always wins over an
upstream's of the same name, and is never evicted. Deleting the repository row removes the rest
(every table that names a repository does so with ON DELETE CASCADE)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Boolean, ForeignKey, String, Table, delete, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from formats.names import repository_key
from registry.db import Base, Transactions, UTCDateTime, utcnow
from registry.models import DIGEST, Blob, Repository, RepositoryBlob


class MirrorRepository(Base):
    """A repository that is a cached copy of an upstream's."""

    __tablename__ = "mirror_repository"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    upstream: Mapped[str] = mapped_column(String(512))
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    last_used: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class MirrorTag(Base):
    """When a cached tag was last checked against the upstream (at most once per interval)."""

    __tablename__ = "mirror_tag"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)  # lower-cased
    digest: Mapped[str] = mapped_column(DIGEST)
    checked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


_repository = cast(Table, Repository.__table__)
_blob = cast(Table, Blob.__table__)
_repository_blob = cast(Table, RepositoryBlob.__table__)
_mirror = cast(Table, MirrorRepository.__table__)
_mirror_tag = cast(Table, MirrorTag.__table__)


@dataclass(frozen=True, slots=True)
class CachedRepository:
    name: str
    upstream: str
    size: int  # bytes of the blobs it links
    pinned: bool
    last_used: dt.datetime


class CacheState(Transactions):
    """One short transaction per method, as ``registry.meta`` (run from a thread pool)."""

    def _repo_id(self, conn: Connection, name: str) -> int | None:
        return conn.execute(select(_repository.c.id).where(_repository.c.key == repository_key(name))).scalar()

    def kind(self, name: str) -> str | None:
        """``"local"``, ``"cached"``, or None where the registry has no such repository."""
        with self._read() as conn:
            row = conn.execute(
                select(_repository.c.id, _mirror.c.repository_id)
                .select_from(_repository.outerjoin(_mirror, _mirror.c.repository_id == _repository.c.id))
                .where(_repository.c.key == repository_key(name))
            ).first()
        if row is None:
            return None
        return "local" if row[1] is None else "cached"

    def upstream_of(self, name: str) -> str | None:
        """The upstream URL a cached repository came from (None: local or none)."""
        with self._read() as conn:
            return conn.execute(
                select(_mirror.c.upstream)
                .select_from(_mirror.join(_repository, _mirror.c.repository_id == _repository.c.id))
                .where(_repository.c.key == repository_key(name))
            ).scalar()

    def ensure(self, name: str, upstream: str) -> bool:
        """Make ``name`` a cached copy of ``upstream``: the repository (public: the mirror serves
        what its upstream serves it) and its cache row, in one transaction, so that no other
        request ever sees it as a local repository. False where it is a local repository."""
        now = utcnow()
        with self._write() as conn:
            repo_id = self._repo_id(conn, name)
            if repo_id is None:
                conn.execute(
                    _repository.insert().values(
                        key=repository_key(name), name=name, visibility="public", created_at=now
                    )
                )
                repo_id = self._repo_id(conn, name)
                assert repo_id is not None
            elif (
                conn.execute(select(_mirror.c.repository_id).where(_mirror.c.repository_id == repo_id)).first() is None
            ):
                return False
            exists = conn.execute(select(_mirror.c.repository_id).where(_mirror.c.repository_id == repo_id)).first()
            if exists is None:
                conn.execute(
                    _mirror.insert().values(
                        repository_id=repo_id, upstream=upstream, pinned=False, last_used=now, created_at=now
                    )
                )
            return True

    def touch(self, name: str) -> None:
        with self._write() as conn:
            repo_id = self._repo_id(conn, name)
            if repo_id is not None:
                conn.execute(update(_mirror).where(_mirror.c.repository_id == repo_id).values(last_used=utcnow()))

    def checked(self, name: str, tag: str) -> tuple[str, dt.datetime] | None:
        """``(digest, when)`` of the tag's last check against the upstream, or None."""
        with self._read() as conn:
            row = conn.execute(
                select(_mirror_tag.c.digest, _mirror_tag.c.checked_at)
                .select_from(_mirror_tag.join(_repository, _mirror_tag.c.repository_id == _repository.c.id))
                .where(_repository.c.key == repository_key(name), _mirror_tag.c.tag == tag.lower())
            ).first()
        return (row[0], row[1]) if row else None

    def set_checked(self, name: str, tag: str, digest: str) -> None:
        now = utcnow()
        with self._write() as conn:
            repo_id = self._repo_id(conn, name)
            if repo_id is None:
                return
            conn.execute(
                delete(_mirror_tag).where(_mirror_tag.c.repository_id == repo_id, _mirror_tag.c.tag == tag.lower())
            )
            conn.execute(
                _mirror_tag.insert().values(repository_id=repo_id, tag=tag.lower(), digest=digest, checked_at=now)
            )

    def set_pinned(self, name: str, pinned: bool) -> bool:
        with self._write() as conn:
            repo_id = self._repo_id(conn, name)
            if repo_id is None:
                return False
            result = conn.execute(update(_mirror).where(_mirror.c.repository_id == repo_id).values(pinned=pinned))
            return result.rowcount > 0

    def is_pinned(self, name: str) -> bool | None:
        """Whether a cached repository is pinned; None: not a cached repository."""
        with self._read() as conn:
            pinned = conn.execute(
                select(_mirror.c.pinned)
                .select_from(_mirror.join(_repository, _mirror.c.repository_id == _repository.c.id))
                .where(_repository.c.key == repository_key(name))
            ).scalar()
        return None if pinned is None else bool(pinned)

    def make_local(self, name: str) -> str | None:
        """Make a cached repository one of the registry's own, in place: its cache rows go (its
        manifests, tags and links stay), so it is never checked upstream nor evicted again, and
        takes pushes. The upstream it followed; None where it was not a cached repository."""
        with self._write() as conn:
            repo_id = self._repo_id(conn, name)
            if repo_id is None:
                return None
            upstream = conn.execute(select(_mirror.c.upstream).where(_mirror.c.repository_id == repo_id)).scalar()
            if upstream is None:
                return None
            conn.execute(delete(_mirror_tag).where(_mirror_tag.c.repository_id == repo_id))
            conn.execute(delete(_mirror).where(_mirror.c.repository_id == repo_id))
            return str(upstream)

    def cached(self) -> list[CachedRepository]:
        """Every cached repository, least recently used first."""
        size = (
            select(func.coalesce(func.sum(_blob.c.size), 0))
            .select_from(_repository_blob.join(_blob, _blob.c.digest == _repository_blob.c.digest))
            .where(_repository_blob.c.repository_id == _mirror.c.repository_id)
            .scalar_subquery()
        )
        query = (
            select(_repository.c.name, _mirror.c.upstream, size, _mirror.c.pinned, _mirror.c.last_used)
            .select_from(_mirror.join(_repository, _mirror.c.repository_id == _repository.c.id))
            .order_by(_mirror.c.last_used, _repository.c.key)
        )
        with self._read() as conn:
            return [CachedRepository(r[0], r[1], int(r[2]), bool(r[3]), r[4]) for r in conn.execute(query)]

    def total_size(self) -> int:
        """Bytes of the distinct blobs cached repositories link (what eviction can win back)."""
        linked = (
            select(_repository_blob.c.digest)
            .select_from(_repository_blob.join(_mirror, _mirror.c.repository_id == _repository_blob.c.repository_id))
            .distinct()
            .subquery()
        )
        with self._read() as conn:
            value: Any = conn.execute(
                select(func.coalesce(func.sum(_blob.c.size), 0)).where(_blob.c.digest.in_(select(linked.c.digest)))
            ).scalar_one()
        return int(value)

    def drop(self, name: str) -> list[str] | None:
        """Delete a cached repository (its manifests, tags and links go with it); the digests it
        linked, for the caller to delete those nothing else uses. None: not a cached repository."""
        with self._write() as conn:
            repo_id = self._repo_id(conn, name)
            if repo_id is None:
                return None
            if conn.execute(select(_mirror.c.repository_id).where(_mirror.c.repository_id == repo_id)).first() is None:
                return None
            digests = list(
                conn.execute(
                    select(_repository_blob.c.digest).where(_repository_blob.c.repository_id == repo_id)
                ).scalars()
            )
            conn.execute(delete(_repository).where(_repository.c.id == repo_id))
            return digests
