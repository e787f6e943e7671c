"""What the web site reads from the database: repositories with their tags, filtered by what the
viewer may read. Read-only SQL; every write stays in ``registry.meta`` and ``registry.accounts``.

Which repositories a viewer may read is decided by ``registry.api.common.readable_namespaces``
and turned into SQL by ``registry.meta.readable_repositories``, exactly as ``/v2/_catalog`` does."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine, Table, and_, func, or_, select

from formats.names import DEFAULT_NAMESPACE
from registry.db import read_transaction
from registry.meta import readable_repositories
from registry.models import Manifest, PullCount, Repository, Tag

_repository = cast(Table, Repository.__table__)
_manifest = cast(Table, Manifest.__table__)
_tag = cast(Table, Tag.__table__)
_pull = cast(Table, PullCount.__table__)

# How many repositories one listing considers at most (search filters them further in Python).
MAX_CANDIDATES = 5000


@dataclass(frozen=True, slots=True)
class TagRow:
    name: str
    digest: str
    size: int  # of the manifest document
    updated_at: dt.datetime
    pulls: int = 0


@dataclass(frozen=True, slots=True)
class RepoRow:
    name: str  # as first pushed
    visibility: str
    updated_at: dt.datetime  # the newest tag's
    tag_count: int
    pulls: int = 0

    @property
    def namespace(self) -> str:
        return self.name.split("/", 1)[0] if "/" in self.name else DEFAULT_NAMESPACE

    @property
    def model(self) -> str:
        return self.name.split("/", 1)[1] if "/" in self.name else self.name

    @property
    def path(self) -> str:
        """The model page's path: ``/namespace/model`` (a one-part name is library's)."""
        return f"/{self.namespace}/{self.model}"


def _pulls() -> Any:
    """A repository's pulls, all tags together (a correlated subquery: one row per repository)."""
    total = select(func.coalesce(func.sum(_pull.c.count), 0)).where(_pull.c.repository_id == _repository.c.id)
    return total.scalar_subquery()


class Catalog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def repositories(
        self,
        namespaces: set[str] | None,
        *,
        namespace: str | None = None,
        limit: int = MAX_CANDIDATES,
        popular: bool = False,
    ) -> list[RepoRow]:
        """Readable repositories with at least one tag, newest first (most pulled first when
        ``popular``); only ``namespace``'s when given. Names deeper than ``namespace/model`` (OCI
        artifacts) are not pages of the site."""
        updated = func.max(_tag.c.updated_at).label("updated_at")
        pulls = _pulls().label("pulls")
        order = [pulls.desc(), updated.desc()] if popular else [updated.desc()]
        query = (
            select(_repository.c.name, _repository.c.visibility, updated, func.count(_tag.c.name).label("tags"), pulls)
            .select_from(_repository.join(_tag, _tag.c.repository_id == _repository.c.id))
            .group_by(_repository.c.id, _repository.c.name, _repository.c.visibility)
            .order_by(*order, _repository.c.key)
            .limit(limit)
        )
        if namespaces is not None:
            query = query.where(readable_repositories(namespaces))
        if namespace is not None:
            key = namespace.lower()
            if key == DEFAULT_NAMESPACE:
                query = query.where(
                    or_(_repository.c.key.startswith(key + "/", autoescape=True), ~_repository.c.key.contains("/"))
                )
            else:
                query = query.where(_repository.c.key.startswith(key + "/", autoescape=True))
        with read_transaction(self.engine) as conn:
            rows = conn.execute(query).all()
        rows = [r for r in rows if r.name.count("/") <= 1]
        return [RepoRow(r.name, r.visibility, r.updated_at, int(r.tags), int(r.pulls)) for r in rows]

    def repository(self, name: str) -> RepoRow | None:
        """One repository with at least one tag, whoever may read it (the caller checks)."""
        key = name.lower()
        updated = func.max(_tag.c.updated_at).label("updated_at")
        query = (
            select(
                _repository.c.name,
                _repository.c.visibility,
                updated,
                func.count(_tag.c.name).label("tags"),
                _pulls().label("pulls"),
            )
            .select_from(_repository.join(_tag, _tag.c.repository_id == _repository.c.id))
            .where(_repository.c.key == key)
            .group_by(_repository.c.id, _repository.c.name, _repository.c.visibility)
        )
        with read_transaction(self.engine) as conn:
            r = conn.execute(query).first()
        return RepoRow(r.name, r.visibility, r.updated_at, int(r.tags), int(r.pulls)) if r else None

    def tags(self, names: list[str]) -> dict[str, list[TagRow]]:
        """Each repository's tags (by repository key), newest first."""
        keys = [n.lower() for n in names]
        if not keys:
            return {}
        query = (
            select(
                _repository.c.key,
                _tag.c.name,
                _manifest.c.digest,
                _manifest.c.size,
                _tag.c.updated_at,
                func.coalesce(_pull.c.count, 0).label("pulls"),
            )
            .select_from(
                _tag.join(_repository, _tag.c.repository_id == _repository.c.id)
                .join(_manifest, _tag.c.manifest_id == _manifest.c.id)
                .outerjoin(
                    _pull, and_(_pull.c.repository_id == _tag.c.repository_id, _pull.c.tag == func.lower(_tag.c.name))
                )
            )
            .where(_repository.c.key.in_(keys))
            .order_by(_tag.c.updated_at.desc(), _tag.c.name)
        )
        out: dict[str, list[TagRow]] = {k: [] for k in keys}
        with read_transaction(self.engine) as conn:
            for r in conn.execute(query):
                out[r.key].append(TagRow(r.name, r.digest, int(r.size), r.updated_at, int(r.pulls)))
        return out

    def manifest(self, name: str, digest: str) -> bytes | None:
        query = (
            select(_manifest.c.content)
            .select_from(_manifest.join(_repository, _manifest.c.repository_id == _repository.c.id))
            .where(_repository.c.key == name.lower(), _manifest.c.digest == digest)
        )
        with read_transaction(self.engine) as conn:
            content = conn.execute(query).scalar()
        return bytes(content) if content is not None else None


def head_tag(tags: list[TagRow]) -> TagRow | None:
    """The tag that stands for a repository: ``latest`` when there is one, else the newest."""
    for tag in tags:
        if tag.name.lower() == "latest":
            return tag
    return tags[0] if tags else None
