"""Registry metadata in SQL: repositories (and their visibility), blobs, manifests, tags, uploads,
secrets, and the summaries the web site lists and searches (``model_summary``, rewritten in the
transactions that change tags, pulls or a manifest's facts). These tables are this module's; the
account tables are ``registry.accounts``', read here only through its functions
(``default_visibility``). The two are the only modules that issue SQL, each in its own short
transactions (``registry.db.read_transaction``/``write_transaction``).

Every method is synchronous and runs one short transaction; the HTTP handlers call them through
a thread pool, and command-line tools call them directly. Names passed in are repository names
(``namespace/model``, or any OCI name) already validated by the caller."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, delete, exists, func, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from formats.digest import Digest
from formats.manifest import Manifest as ParsedManifest
from formats.names import DEFAULT_NAMESPACE, repository_key, repository_namespace
from registry.accounts import VISIBILITIES, AccountError, default_visibility
from registry.db import Transactions, utcnow
from registry.models import (
    Blob,
    Manifest,
    ManifestReference,
    ManifestSummary,
    ModelSummary,
    PullCount,
    Repository,
    RepositoryBlob,
    Secret,
    Tag,
    Upload,
)
from registry.storage import CHUNK_SIZE, BlobBeingCollected, BlobInfo

_repository = cast(Table, Repository.__table__)
_blob = cast(Table, Blob.__table__)
_repository_blob = cast(Table, RepositoryBlob.__table__)
_manifest = cast(Table, Manifest.__table__)
_reference = cast(Table, ManifestReference.__table__)
_tag = cast(Table, Tag.__table__)
_upload = cast(Table, Upload.__table__)
_secret = cast(Table, Secret.__table__)
_pull_count = cast(Table, PullCount.__table__)
_manifest_summary = cast(Table, ManifestSummary.__table__)
_model_summary = cast(Table, ModelSummary.__table__)


def _bytewise(conn: Connection, column: Any) -> Any:
    """Order and compare by bytes, as SQLite does, not by the PostgreSQL locale (pagination
    must agree with ``last``, and every backend must list in the same order)."""
    return column.collate("C") if conn.dialect.name == "postgresql" else column


def readable_repositories(namespaces: set[str]) -> Any:
    """The SQL condition on ``repository`` for what a caller may read, given the namespaces whose
    private repositories it may read (``registry.api.common.readable_namespaces``): public
    repositories, and every repository in those namespaces. The catalog and the web site's
    listings and search (``Metadata.models``) both filter with it."""
    keys = {ns.lower() for ns in namespaces}
    readable = [_repository.c.key.startswith(ns + "/", autoescape=True) for ns in keys]
    if DEFAULT_NAMESPACE in keys:
        readable.append(~_repository.c.key.contains("/"))  # one-part names are library's
    return or_(_repository.c.visibility == "public", *readable)


class MissingReferences(Exception):
    """A manifest names blobs or manifests its repository does not have."""

    def __init__(self, digests: Sequence[str]) -> None:
        super().__init__(", ".join(digests))
        self.digests = list(digests)


class SizeConflict(Exception):
    """A manifest's descriptor gives a size that differs from the stored blob's."""

    def __init__(self, digest: str, declared: int, actual: int) -> None:
        super().__init__(f"{digest}: descriptor size {declared}, blob size {actual}")
        self.digest = digest


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes
    artifact_type: str | None = None


@dataclass(frozen=True, slots=True)
class UploadRecord:
    upload_id: str
    repository: str
    started_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ManifestFacts:
    """What a manifest's blobs say (``registry.web.cards`` reads them when it is pushed), kept in
    ``manifest_summary`` so that listings never read a blob."""

    size: int  # config and layers
    architecture: str = ""
    parameters: str = ""  # parameter count, "7B"
    quantization: str = ""
    context_length: int | None = None
    capabilities: tuple[str, ...] = ()  # without "completion"
    description: str = ""

    @property
    def inputs(self) -> str:
        return "Text, Image" if "vision" in self.capabilities else "Text"


@dataclass(frozen=True, slots=True)
class ModelRow:
    """A repository with at least one tag, as ``model_summary`` holds it."""

    name: str  # as first pushed
    visibility: str
    tag_count: int
    updated_at: dt.datetime  # the newest tag's
    head_tag: str  # "latest" when there is one, else the newest
    description: str
    capabilities: tuple[str, ...]
    sizes: tuple[str, ...]  # the tags' parameter counts, smallest first
    parameters: str  # the head tag's
    quantization: str
    pulls: int


@dataclass(frozen=True, slots=True)
class TagRow:
    name: str
    digest: str
    size: int  # of the manifest document
    updated_at: dt.datetime
    pulls: int
    facts: ManifestFacts | None  # None until the registry has read the manifest's blobs


# Room in model_summary's and manifest_summary's columns (registry.models).
_LIMITS = {"architecture": 64, "parameters": 16, "quantization": 32, "capabilities": 128, "sizes": 255}
_MAX_DESCRIPTION = 2000
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMBT]?)", re.I)
_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def _size_order(size: str) -> tuple[float, str]:
    """Parameter counts smallest first ("270M" < "1B" < "8x7B" reads as 8 < 7B: good enough for
    a badge row); what is not a count goes last."""
    m = _SIZE.search(size)
    return (float(m.group(1)) * _SCALE[m.group(2).upper()] if m else float("inf"), size)


def _joined(values: Sequence[str], limit: int) -> str:
    """Comma-separated, as many whole values as fit in ``limit`` characters."""
    out = ""
    for v in values:
        v = v.replace(",", " ")
        candidate = f"{out},{v}" if out else v
        if len(candidate) > limit:
            break
        out = candidate
    return out


def _split(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def _stored_spelling(tag: str, stored: Iterable[str]) -> str | None:
    """Which of the stored tags equal to ``tag`` ignoring case it means: itself, else the
    byte-wise first (should an OCI client have pushed several spellings)."""
    names = list(stored)
    if tag in names:
        return tag
    return min(names) if names else None


def _blob_used(digest: Any) -> Any:
    """Whether a repository links the blob or a manifest names it: while so, gc keeps it.
    ``digest``: a value, or the blob table's column (correlated, row by row)."""
    return or_(exists().where(_repository_blob.c.digest == digest), exists().where(_reference.c.digest == digest))


class Metadata(Transactions):
    def _insert(self, conn: Connection, table: Table) -> Any:
        """An INSERT that can take ON CONFLICT clauses on either backend."""
        if conn.dialect.name == "postgresql":
            return postgresql.insert(table)
        if conn.dialect.name == "sqlite":
            return sqlite.insert(table)
        return insert(table)  # pragma: no cover

    # -- repositories ----------------------------------------------------------------------

    def _repository_id(self, conn: Connection, name: str) -> int | None:
        return conn.execute(select(_repository.c.id).where(_repository.c.key == repository_key(name))).scalar()

    def _ensure_repository(self, conn: Connection, name: str) -> int:
        key = repository_key(name)
        # A new repository takes its namespace's default visibility.
        visibility = default_visibility(conn, repository_namespace(key))
        conn.execute(
            self._insert(conn, _repository)
            .values(key=key, name=name, visibility=visibility or "public", created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["key"])
        )
        repo_id = self._repository_id(conn, name)
        assert repo_id is not None
        return repo_id

    def repository_visibility(self, name: str) -> str | None:
        """``public``/``private`` for an existing repository, None when there is none."""
        with self._read() as conn:
            return conn.execute(
                select(_repository.c.visibility).where(_repository.c.key == repository_key(name))
            ).scalar()

    def set_repository_visibility(self, name: str, visibility: str) -> bool:
        if visibility not in VISIBILITIES:
            raise AccountError(f"visibility must be one of {', '.join(VISIBILITIES)}")
        with self._write() as conn:
            result = conn.execute(
                update(_repository).where(_repository.c.key == repository_key(name)).values(visibility=visibility)
            )
            return result.rowcount > 0

    def set_repository_page(self, name: str, *, description: str | None = None, readme: str | None = None) -> bool:
        """Set (a string) or clear ("") the description or README the web site shows for the
        whole model, instead of its head manifest's; the summary follows in the same transaction."""
        values: dict[str, str | None] = {}
        if description is not None:
            values["description"] = description.strip()[:_MAX_DESCRIPTION] or None
        if readme is not None:
            values["readme"] = readme if readme.strip() else None
        with self._write() as conn:
            repo_id = self._repository_id(conn, name)
            if repo_id is None:
                return False
            if values:
                conn.execute(update(_repository).where(_repository.c.id == repo_id).values(**values))
                summarised = select(_model_summary.c.repository_id).where(_model_summary.c.repository_id == repo_id)
                if conn.execute(summarised).first():  # a model with tags: its listing row follows
                    self._refresh_summary(conn, repo_id)
            return True

    def repository_page(self, name: str) -> tuple[str, str]:
        """The description and README set on the web site for ``name`` ("" where none is)."""
        with self._read() as conn:
            row = conn.execute(
                select(_repository.c.description, _repository.c.readme).where(_repository.c.key == repository_key(name))
            ).first()
        return (row[0] or "", row[1] or "") if row is not None else ("", "")

    def repository_exists(self, name: str) -> bool:
        with self._read() as conn:
            return self._repository_id(conn, name) is not None

    def list_repositories(self, n: int, last: str | None, namespaces: set[str] | None = None) -> list[str]:
        """Repositories holding at least one manifest, ordered by name, after ``last``.

        With ``namespaces``, only public repositories and those in these namespaces (what a
        caller may read); None means all."""
        with self._read() as conn:
            key = _bytewise(conn, _repository.c.key)
            query = (
                select(_repository.c.name)
                .where(exists().where(_manifest.c.repository_id == _repository.c.id))
                .order_by(key)
                .limit(n)
            )
            if last:
                query = query.where(key > repository_key(last))
            if namespaces is not None:
                query = query.where(readable_repositories(namespaces))
            return list(conn.execute(query).scalars())

    # -- blobs -----------------------------------------------------------------------------

    def blob_size(self, name: str, digest: Digest) -> int | None:
        """The size of a blob linked into the repository, or None."""
        query = (
            select(_blob.c.size)
            .select_from(_repository_blob.join(_blob).join(_repository))
            .where(_repository.c.key == repository_key(name), _repository_blob.c.digest == str(digest))
        )
        with self._read() as conn:
            return conn.execute(query).scalar()

    def link_blob(self, name: str, info: BlobInfo) -> None:
        with self._write() as conn:
            self._link(conn, self._ensure_repository(conn, name), info)
            self._set_chunks(conn, info)

    def _link(self, conn: Connection, repo_id: int, info: BlobInfo) -> None:
        """Link stored bytes into a repository. Bytes an upload published under a claim
        (``info.generation``, ``claim_blob``) only while the row is still the one claimed (gc did
        not take it to delete them since), and the claim's hold ends; others (found in the store)
        only while nobody holds the row. Else BlobBeingCollected, and nothing changes."""
        digest, now = str(info.digest), utcnow()
        if info.generation is not None:
            # The UPDATE locks the row, as gc's collect_blob does: one of the two waits for the other.
            claimed = and_(_blob.c.digest == digest, _blob.c.generation == info.generation)
            kept = conn.execute(update(_blob).where(claimed).values(held_until=None))
            if kept.rowcount == 0:
                raise BlobBeingCollected(f"{digest} was deleted by gc after this upload published it; push it again")
        else:
            conn.execute(
                self._insert(conn, _blob)
                .values(digest=digest, size=info.size, created_at=now)
                .on_conflict_do_nothing(index_elements=["digest"])
            )
            held = conn.execute(select(_blob.c.held_until).where(_blob.c.digest == digest).with_for_update(read=True))
            held_until = held.scalar()
            if held_until is not None and held_until > now:
                raise BlobBeingCollected(f"{digest} is being deleted by gc or published by an upload; try again")
        self._add_link(conn, repo_id, digest, now)

    def _add_link(self, conn: Connection, repo_id: int, digest: str, now: dt.datetime) -> None:
        conn.execute(
            self._insert(conn, _repository_blob)
            .values(repository_id=repo_id, digest=digest, created_at=now)
            .on_conflict_do_nothing(index_elements=["repository_id", "digest"])
        )

    def mount_blob(self, name: str, source: str, digest: Digest) -> int | None:
        """Link a blob that ``source`` has into ``name``; its size, or None if source lacks it."""
        with self._write() as conn:
            # The row stays locked until the new link is in: gc (collect_blob) cannot take it
            # between this read and that insert, should the source's link go meanwhile.
            size = conn.execute(
                select(_blob.c.size)
                .select_from(_repository_blob.join(_blob).join(_repository))
                .where(_repository.c.key == repository_key(source), _repository_blob.c.digest == str(digest))
                .with_for_update(read=True, of=_blob)
            ).scalar()
            if size is None:
                return None
            self._add_link(conn, self._ensure_repository(conn, name), str(digest), utcnow())
            return int(size)

    def unlink_blob(self, name: str, digest: Digest) -> bool:
        with self._write() as conn:
            repo_id = self._repository_id(conn, name)
            if repo_id is None:
                return False
            result = conn.execute(
                delete(_repository_blob).where(
                    _repository_blob.c.repository_id == repo_id, _repository_blob.c.digest == str(digest)
                )
            )
            return result.rowcount > 0

    # -- uploads ---------------------------------------------------------------------------

    def start_upload(self, name: str, upload_id: str) -> None:
        now = utcnow()
        with self._write() as conn:
            repo_id = self._ensure_repository(conn, name)
            conn.execute(insert(_upload).values(id=upload_id, repository_id=repo_id, started_at=now, updated_at=now))

    def get_upload(self, name: str, upload_id: str) -> UploadRecord | None:
        """The session if it exists and belongs to this repository."""
        query = (
            select(_upload.c.id, _repository.c.name, _upload.c.started_at)
            .select_from(_upload.join(_repository))
            .where(_upload.c.id == upload_id, _repository.c.key == repository_key(name))
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return UploadRecord(row[0], row[1], row[2]) if row else None

    def touch_upload(self, upload_id: str) -> None:
        with self._write() as conn:
            conn.execute(update(_upload).where(_upload.c.id == upload_id).values(updated_at=utcnow()))

    def lease_upload(self, upload_id: str, held: dt.datetime | None, until: dt.datetime) -> bool:
        """The session's writer lease, so that two requests (on two replicas) never write one
        upload at once: while one writes, the row's ``updated_at`` is ``until``, in the future.
        ``held`` None takes it if nobody holds it; else renews (or, with ``until`` now, gives back)
        the lease the caller holds. False: another request holds it, or took it over."""
        held_now = _upload.c.updated_at <= utcnow() if held is None else _upload.c.updated_at == held
        with self._write() as conn:
            result = conn.execute(update(_upload).where(_upload.c.id == upload_id, held_now).values(updated_at=until))
            return result.rowcount > 0

    def finish_upload(self, name: str, upload_id: str, info: BlobInfo) -> None:
        """Link the committed blob into the repository and forget the session."""
        with self._write() as conn:
            self._link(conn, self._ensure_repository(conn, name), info)
            self._set_chunks(conn, info)
            conn.execute(delete(_upload).where(_upload.c.id == upload_id))

    def _set_chunks(self, conn: Connection, info: BlobInfo) -> None:
        if info.chunk_sums:
            conn.execute(
                update(_blob)
                .where(_blob.c.digest == str(info.digest), _blob.c.chunk_sums.is_(None))
                .values(chunk_size=CHUNK_SIZE, chunk_sums="\n".join(info.chunk_sums))
            )

    def chunks(self, name: str, digest: Digest) -> tuple[int, list[str] | None] | None:
        """``(size, chunk sums or None)`` of a blob linked into the repository, or None."""
        query = (
            select(_blob.c.size, _blob.c.chunk_size, _blob.c.chunk_sums)
            .select_from(_repository_blob.join(_blob).join(_repository))
            .where(_repository.c.key == repository_key(name), _repository_blob.c.digest == str(digest))
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        if row.chunk_sums is None or row.chunk_size != CHUNK_SIZE:
            return int(row.size), None
        return int(row.size), row.chunk_sums.split("\n") if row.chunk_sums else []

    def set_chunks(self, info: BlobInfo) -> None:
        with self._write() as conn:
            self._set_chunks(conn, info)

    def delete_upload(self, upload_id: str) -> None:
        with self._write() as conn:
            conn.execute(delete(_upload).where(_upload.c.id == upload_id))

    def stale_uploads(self, cutoff: dt.datetime) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(select(_upload.c.id).where(_upload.c.updated_at < cutoff)).scalars())

    def upload_ids(self) -> set[str]:
        with self._read() as conn:
            return set(conn.execute(select(_upload.c.id)).scalars())

    # -- manifests -------------------------------------------------------------------------

    def put_manifest(self, name: str, manifest: ParsedManifest, tag: str | None) -> None:
        """Store a manifest (and point ``tag`` at it) once every blob it names is present.

        Raises MissingReferences or SizeConflict; nothing is written then."""
        digest = str(manifest.digest)
        now = utcnow()
        with self._write() as conn:
            repo_id = self._ensure_repository(conn, name)
            blobs = {str(d.digest): d.size for d in manifest.blobs()}
            children = {str(d.digest) for d in manifest.manifests}
            found = dict(
                conn.execute(
                    select(_blob.c.digest, _blob.c.size)
                    .select_from(_repository_blob.join(_blob))
                    .where(_repository_blob.c.repository_id == repo_id, _blob.c.digest.in_(blobs))
                ).all()
            )
            found_children = set(
                conn.execute(
                    select(_manifest.c.digest).where(
                        _manifest.c.repository_id == repo_id, _manifest.c.digest.in_(children)
                    )
                ).scalars()
            )
            missing = sorted(set(blobs) - set(found)) + sorted(children - found_children)
            if missing:
                raise MissingReferences(missing)
            for blob_digest, declared in blobs.items():
                if found[blob_digest] != declared:
                    raise SizeConflict(blob_digest, declared, found[blob_digest])

            conn.execute(
                self._insert(conn, _manifest)
                .values(
                    repository_id=repo_id,
                    digest=digest,
                    media_type=manifest.media_type,
                    artifact_type=manifest.effective_artifact_type(),
                    subject_digest=str(manifest.subject.digest) if manifest.subject else None,
                    size=len(manifest.raw),
                    content=manifest.raw,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["repository_id", "digest"])
            )
            manifest_id = conn.execute(
                select(_manifest.c.id).where(_manifest.c.repository_id == repo_id, _manifest.c.digest == digest)
            ).scalar_one()
            refs = [{"manifest_id": manifest_id, "digest": d} for d in sorted(set(blobs) | children)]
            if refs:
                conn.execute(
                    self._insert(conn, _reference).on_conflict_do_nothing(index_elements=["manifest_id", "digest"]),
                    refs,
                )
            if tag is not None:
                tag = self._tag_name(conn, repo_id, tag) or tag  # keep the spelling already there
                conn.execute(
                    self._insert(conn, _tag)
                    .values(repository_id=repo_id, name=tag, manifest_id=manifest_id, updated_at=now)
                    .on_conflict_do_update(
                        index_elements=["repository_id", "name"], set_={"manifest_id": manifest_id, "updated_at": now}
                    )
                )
                self._refresh_summary(conn, repo_id)

    def _tag_name(self, conn: Connection, repo_id: int, tag: str) -> str | None:
        """The stored spelling of ``tag``: itself, else the one equal to it ignoring case (the
        byte-wise first, should an OCI client have pushed several). Tags compare as Ollama's
        names do (protocol spec §1.4), so ``LATEST`` finds ``latest``."""
        names = conn.execute(
            select(_tag.c.name).where(_tag.c.repository_id == repo_id, func.lower(_tag.c.name) == tag.lower())
        ).scalars()
        return _stored_spelling(tag, names)

    def get_manifest(self, name: str, reference: str) -> StoredManifest | None:
        """A manifest by tag (spelt as ``_tag_name`` finds it), or by digest when ``reference``
        is one. One query either way: this is every pull's first request, and on PostgreSQL each
        query is a round trip (three of them held manifest GETs to a few hundred a second)."""
        cols = (_manifest.c.digest, _manifest.c.media_type, _manifest.c.content)
        in_repository = _repository.c.key == repository_key(name)
        with self._read() as conn:
            if reference.startswith("sha256:"):
                query = (
                    select(*cols)
                    .select_from(_manifest.join(_repository, _manifest.c.repository_id == _repository.c.id))
                    .where(in_repository, _manifest.c.digest == reference)
                )
                row = conn.execute(query).first()
                return StoredManifest(row[0], row[1], row[2]) if row else None
            # Every tag equal to ``reference`` ignoring case, with its manifest (``_stored_spelling``).
            query = (
                select(_tag.c.name, *cols)
                .select_from(
                    _tag.join(_repository, _tag.c.repository_id == _repository.c.id).join(
                        _manifest, _tag.c.manifest_id == _manifest.c.id
                    )
                )
                .where(in_repository, func.lower(_tag.c.name) == reference.lower())
            )
            rows: dict[str, StoredManifest] = {str(r[0]): StoredManifest(r[1], r[2], r[3]) for r in conn.execute(query)}
        tag = _stored_spelling(reference, rows)
        return None if tag is None else rows[tag]

    def delete_manifest(self, name: str, digest: Digest) -> bool:
        """Delete a manifest and every tag pointing at it."""
        with self._write() as conn:
            repo_id = self._repository_id(conn, name)
            if repo_id is None:
                return False
            manifest_id = conn.execute(
                select(_manifest.c.id).where(_manifest.c.repository_id == repo_id, _manifest.c.digest == str(digest))
            ).scalar()
            if manifest_id is None:
                return False
            # Explicit rather than relying on ON DELETE CASCADE being enabled.
            conn.execute(delete(_tag).where(_tag.c.manifest_id == manifest_id))
            conn.execute(delete(_reference).where(_reference.c.manifest_id == manifest_id))
            conn.execute(delete(_manifest_summary).where(_manifest_summary.c.manifest_id == manifest_id))
            conn.execute(delete(_manifest).where(_manifest.c.id == manifest_id))
            self._refresh_summary(conn, repo_id)
            return True

    def delete_tag(self, name: str, tag: str) -> bool:
        with self._write() as conn:
            repo_id = self._repository_id(conn, name)
            if repo_id is None:
                return False
            stored = self._tag_name(conn, repo_id, tag)
            if stored is None:
                return False
            result = conn.execute(delete(_tag).where(_tag.c.repository_id == repo_id, _tag.c.name == stored))
            self._refresh_summary(conn, repo_id)
            return result.rowcount > 0

    def list_tags(self, name: str, n: int, last: str | None) -> list[str] | None:
        """Tags in lexical order after ``last``; None if the repository does not exist."""
        with self._read() as conn:
            repo_id = self._repository_id(conn, name)
            if repo_id is None:
                return None
            tag = _bytewise(conn, _tag.c.name)
            query = select(_tag.c.name).where(_tag.c.repository_id == repo_id).order_by(tag).limit(n)
            if last:
                query = query.where(tag > last)
            return list(conn.execute(query).scalars())

    def referrers(self, name: str, subject: Digest, artifact_type: str | None) -> list[StoredManifest]:
        query = (
            select(_manifest.c.digest, _manifest.c.media_type, _manifest.c.content, _manifest.c.artifact_type)
            .select_from(_manifest.join(_repository))
            .where(_repository.c.key == repository_key(name), _manifest.c.subject_digest == str(subject))
            .order_by(_manifest.c.created_at, _manifest.c.id)
        )
        if artifact_type:
            query = query.where(_manifest.c.artifact_type == artifact_type)
        with self._read() as conn:
            return [StoredManifest(r[0], r[1], r[2], r[3]) for r in conn.execute(query)]

    # -- summaries (the web site's listings and search) ------------------------------------

    def _refresh_summary(self, conn: Connection, repo_id: int) -> None:
        """Rewrite one repository's ``model_summary`` row from its tags, their manifests' facts
        and its pulls (in the caller's transaction); delete it when no tag is left."""
        ms = _manifest_summary
        tags = conn.execute(
            select(
                _tag.c.name, _tag.c.updated_at, ms.c.parameters, ms.c.quantization, ms.c.capabilities, ms.c.description
            )
            .select_from(_tag.outerjoin(ms, ms.c.manifest_id == _tag.c.manifest_id))
            .where(_tag.c.repository_id == repo_id)
        ).all()
        if not tags:
            conn.execute(delete(_model_summary).where(_model_summary.c.repository_id == repo_id))
            return
        newest = max(tags, key=lambda t: (t.updated_at, t.name))
        head = next((t for t in tags if t.name.lower() == "latest"), newest)
        sizes = sorted({t.parameters for t in tags if t.parameters}, key=_size_order)
        key, name = conn.execute(select(_repository.c.key, _repository.c.name).where(_repository.c.id == repo_id)).one()
        pulls = conn.execute(
            select(func.coalesce(func.sum(_pull_count.c.count), 0)).where(_pull_count.c.repository_id == repo_id)
        ).scalar_one()
        own = conn.execute(select(_repository.c.description).where(_repository.c.id == repo_id)).scalar_one()
        description = own if own else (head.description or "")
        values = {
            "namespace": repository_namespace(key),
            "tag_count": len(tags),
            "updated_at": newest.updated_at,
            "head_tag": head.name,
            "description": description,
            "capabilities": head.capabilities or "",
            "sizes": _joined(sizes, _LIMITS["sizes"]),
            "parameters": head.parameters or "",
            "quantization": head.quantization or "",
            "pulls": int(pulls),
            "search_text": f"{name} {description}".lower(),
        }
        conn.execute(
            self._insert(conn, _model_summary)
            .values(repository_id=repo_id, **values)
            .on_conflict_do_update(index_elements=["repository_id"], set_=values)
        )

    def set_manifest_facts(self, name: str, digest: str, facts: ManifestFacts) -> bool:
        """Keep what ``name``'s manifest ``digest`` says (and rewrite the repository's summary);
        False when the repository no longer has that manifest."""
        values = {
            "size": facts.size,
            "architecture": facts.architecture[: _LIMITS["architecture"]],
            "parameters": facts.parameters[: _LIMITS["parameters"]],
            "quantization": facts.quantization[: _LIMITS["quantization"]],
            "context_length": facts.context_length,
            "capabilities": _joined(facts.capabilities, _LIMITS["capabilities"]),
            "description": facts.description[:_MAX_DESCRIPTION],
        }
        with self._write() as conn:
            found = conn.execute(
                select(_manifest.c.id, _manifest.c.repository_id)
                .select_from(_manifest.join(_repository))
                .where(_repository.c.key == repository_key(name), _manifest.c.digest == digest)
            ).first()
            if found is None:
                return False
            conn.execute(
                self._insert(conn, _manifest_summary)
                .values(manifest_id=found.id, **values)
                .on_conflict_do_update(index_elements=["manifest_id"], set_=values)
            )
            self._refresh_summary(conn, found.repository_id)
            return True

    def manifests_without_facts(self, limit: int) -> list[tuple[str, str]]:
        """``(repository, digest)`` of tagged manifests whose facts were never read (pushed before
        migration 0006, or while reading them failed), at most ``limit``."""
        query = (
            select(_repository.c.name, _manifest.c.digest)
            .select_from(
                _tag.join(_manifest, _tag.c.manifest_id == _manifest.c.id)
                .join(_repository, _manifest.c.repository_id == _repository.c.id)
                .outerjoin(_manifest_summary, _manifest_summary.c.manifest_id == _manifest.c.id)
            )
            .where(_manifest_summary.c.manifest_id.is_(None))
            .group_by(_repository.c.name, _manifest.c.digest)
            .limit(limit)
        )
        with self._read() as conn:
            return [(r.name, r.digest) for r in conn.execute(query)]

    def _model_query(self) -> Any:
        s = _model_summary
        return select(
            _repository.c.name, _repository.c.visibility, s.c.tag_count, s.c.updated_at, s.c.head_tag,
            s.c.description, s.c.capabilities, s.c.sizes, s.c.parameters, s.c.quantization, s.c.pulls,
        ).select_from(s.join(_repository, s.c.repository_id == _repository.c.id))  # fmt: skip

    @staticmethod
    def _model_row(r: Any) -> ModelRow:
        return ModelRow(
            r.name, r.visibility, int(r.tag_count), r.updated_at, r.head_tag, r.description,
            _split(r.capabilities), _split(r.sizes), r.parameters, r.quantization, int(r.pulls),
        )  # fmt: skip

    def models(
        self,
        namespaces: set[str] | None,
        *,
        words: Sequence[str] = (),
        capabilities: Sequence[str] = (),
        namespace: str | None = None,
        popular: bool = False,
        limit: int = 20,
        offset: int = 0,
    ) -> list[ModelRow]:
        """Repositories with a tag that a caller may read (``namespaces`` as for
        ``readable_repositories``; None: all), newest first or most pulled first, whose name and
        description hold every one of ``words`` (any case) and that have every one of
        ``capabilities``; only ``namespace``'s when given. One indexed query: the page's rows."""
        s = _model_summary
        query = self._model_query()
        if namespaces is not None:
            query = query.where(readable_repositories(namespaces))
        if namespace is not None:
            query = query.where(s.c.namespace == namespace.lower())
        for word in words:
            query = query.where(s.c.search_text.contains(word.lower(), autoescape=True))
        for capability in capabilities:
            padded = literal(",") + s.c.capabilities + literal(",")
            query = query.where(padded.contains(f",{capability},", autoescape=True))
        # repository_id breaks ties: it is in every index of the table, so the order stays indexed.
        order = [s.c.pulls.desc(), s.c.updated_at.desc()] if popular else [s.c.updated_at.desc()]
        query = query.order_by(*order, s.c.repository_id.desc()).limit(limit).offset(offset)
        with self._read() as conn:
            return [self._model_row(r) for r in conn.execute(query)]

    def model(self, name: str) -> ModelRow | None:
        """One repository with a tag, whoever may read it (the caller checks)."""
        query = self._model_query().where(_repository.c.key == repository_key(name))
        with self._read() as conn:
            row = conn.execute(query).first()
        return self._model_row(row) if row is not None else None

    def model_tags(self, name: str, limit: int | None = None) -> list[TagRow]:
        """A repository's tags with their pulls and facts, newest first."""
        ms = _manifest_summary
        query = (
            select(
                _tag.c.name,
                _manifest.c.digest,
                _manifest.c.size,
                _tag.c.updated_at,
                func.coalesce(_pull_count.c.count, 0).label("pulls"),
                ms.c.manifest_id.label("known"),
                ms.c.size.label("total"),
                ms.c.architecture,
                ms.c.parameters,
                ms.c.quantization,
                ms.c.context_length,
                ms.c.capabilities,
                ms.c.description,
            )
            .select_from(
                _tag.join(_repository, _tag.c.repository_id == _repository.c.id)
                .join(_manifest, _tag.c.manifest_id == _manifest.c.id)
                .outerjoin(
                    _pull_count,
                    and_(
                        _pull_count.c.repository_id == _tag.c.repository_id,
                        _pull_count.c.tag == func.lower(_tag.c.name),
                    ),
                )
                .outerjoin(ms, ms.c.manifest_id == _manifest.c.id)
            )
            .where(_repository.c.key == repository_key(name))
            .order_by(_tag.c.updated_at.desc(), _tag.c.name)
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        out = []
        for r in rows:
            facts = None
            if r.known is not None:
                facts = ManifestFacts(
                    int(r.total), r.architecture, r.parameters, r.quantization,
                    int(r.context_length) if r.context_length is not None else None,
                    _split(r.capabilities), r.description,
                )  # fmt: skip
            out.append(TagRow(r.name, r.digest, int(r.size), r.updated_at, int(r.pulls), facts))
        return out

    # -- pull counts -----------------------------------------------------------------------

    def add_pulls(self, counts: dict[tuple[str, str], int]) -> None:
        """Add ``{(repository, tag): pulls}`` to the counts, in one transaction (registry.pulls);
        repositories deleted since are skipped."""
        now = utcnow()
        with self._write() as conn:
            keys = {name.lower() for name, _ in counts}
            ids = dict(
                conn.execute(select(_repository.c.key, _repository.c.id).where(_repository.c.key.in_(keys))).all()
            )
            rows = [
                {"repository_id": ids[name.lower()], "tag": tag.lower()[:128], "count": n, "updated_at": now}
                for (name, tag), n in sorted(counts.items())
                if name.lower() in ids
            ]
            if not rows:
                return
            stmt = self._insert(conn, _pull_count)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["repository_id", "tag"],
                    set_={"count": _pull_count.c.count + stmt.excluded.count, "updated_at": stmt.excluded.updated_at},
                ),
                rows,
            )
            # The listings sort by a repository's total: recounted, so it heals should one drift.
            total = (
                select(func.coalesce(func.sum(_pull_count.c.count), 0))
                .where(_pull_count.c.repository_id == _model_summary.c.repository_id)
                .scalar_subquery()
            )
            touched = sorted({row["repository_id"] for row in rows})
            conn.execute(update(_model_summary).where(_model_summary.c.repository_id.in_(touched)).values(pulls=total))

    # -- garbage ---------------------------------------------------------------------------

    def unreferenced_blobs(self, cutoff: dt.datetime) -> list[str]:
        """Blobs older than ``cutoff`` that no repository links and no manifest names."""
        query = select(_blob.c.digest).where(_blob.c.created_at < cutoff, ~_blob_used(_blob.c.digest))
        with self._read() as conn:
            return list(conn.execute(query).scalars())

    # gc and uploads take turns on a blob's bytes through its row (registry.gc has the protocol):
    # an upload claims the row before it publishes, gc takes it before it deletes, each for a
    # while (``held_until``); gc's taking gives the row a new generation, which the link checks.

    def blob_in_use(self, digest: str) -> bool:
        """Whether a repository links the blob or a manifest names it (gc's rule)."""
        with self._read() as conn:
            return bool(conn.execute(select(_blob_used(digest))).scalar())

    def claim_blob(self, digest: Digest, size: int, hold: float) -> str | None:
        """Before an upload publishes bytes under ``digest``: the row's generation, the row held
        for ``hold`` seconds (made if there is none; gc's grace period starts again). None while
        someone else holds it (gc deleting the bytes, another upload publishing them). A hold that
        ran out was someone's who is gone: the row then starts a new generation."""
        now = utcnow()
        fresh = uuid.uuid4().hex
        values = {"held_until": now + dt.timedelta(seconds=hold), "created_at": now}
        with self._write() as conn:
            conn.execute(
                self._insert(conn, _blob)
                .values(digest=str(digest), size=size, generation=fresh, **values)
                .on_conflict_do_nothing(index_elements=["digest"])
            )
            query = select(_blob.c.generation, _blob.c.held_until).where(_blob.c.digest == str(digest))
            row = conn.execute(query.with_for_update()).first()
            if row is None:
                return None  # gc dropped it between the two statements: ask again
            if row.generation == fresh:
                return fresh  # made just now
            if row.held_until is not None and row.held_until > now:
                return None
            generation = row.generation if row.held_until is None and row.generation else fresh
            conn.execute(update(_blob).where(_blob.c.digest == str(digest)).values(generation=generation, **values))
            return str(generation)

    def release_blob(self, digest: Digest, generation: str, present: bool) -> None:
        """Undo ``claim_blob`` for bytes that were not published after all (the publish failed, or
        the bytes were gone once claimed): the hold ends, so the next upload need not wait for it,
        and a row the store has no bytes for is deleted unless something uses it. Nothing if the
        row is not that generation any more."""
        with self._write() as conn:
            claimed = and_(_blob.c.digest == str(digest), _blob.c.generation == generation)
            if not present and conn.execute(delete(_blob).where(claimed, ~_blob_used(str(digest)))).rowcount:
                return
            conn.execute(update(_blob).where(claimed).values(held_until=None))

    def collect_blob(self, digest: str, cutoff: dt.datetime, hold: float) -> str | None:
        """gc takes a blob's row to delete its bytes: the row's new generation (no upload claimed
        it), held for ``hold`` seconds. None when a repository links it or a manifest names it, it
        was published since ``cutoff``, or someone holds it. The row is locked before the checks,
        so a link being made meanwhile is either seen or waits and then finds the new generation."""
        now = utcnow()
        with self._write() as conn:
            query = select(_blob.c.created_at, _blob.c.held_until).where(_blob.c.digest == digest)
            row = conn.execute(query.with_for_update()).first()
            if row is None or row.created_at >= cutoff or (row.held_until is not None and row.held_until > now):
                return None
            if conn.execute(select(_blob_used(digest))).scalar():
                return None
            generation = uuid.uuid4().hex
            values = {"generation": generation, "held_until": now + dt.timedelta(seconds=hold)}
            conn.execute(update(_blob).where(_blob.c.digest == digest).values(**values))
            return generation

    def hold_blob(self, digest: str, generation: str, hold: float) -> bool:
        """Renew gc's hold on the row it took; False if it is not that generation any more."""
        until = utcnow() + dt.timedelta(seconds=hold)
        with self._write() as conn:
            claimed = and_(_blob.c.digest == digest, _blob.c.generation == generation)
            return conn.execute(update(_blob).where(claimed).values(held_until=until)).rowcount > 0

    def drop_blob(self, digest: str, generation: str) -> bool:
        """The row gc took (``collect_blob``), once its bytes are gone; False if it is not the same
        generation any more (gc's hold ran out and an upload claimed it)."""
        with self._write() as conn:
            result = conn.execute(delete(_blob).where(_blob.c.digest == digest, _blob.c.generation == generation))
            return result.rowcount > 0

    # -- secrets ---------------------------------------------------------------------------

    def secret(self, name: str) -> bytes:
        """A random key shared by every process using this database, created on first use."""
        with self._write() as conn:
            conn.execute(
                self._insert(conn, _secret)
                .values(name=name, value=secrets.token_hex(32), created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["name"])
            )
            value = conn.execute(select(_secret.c.value).where(_secret.c.name == name)).scalar_one()
        return bytes.fromhex(value)

    def count(self, table: str) -> int:
        """Rows in a table (for tests and status output)."""
        tables = {t.name: t for t in (_repository, _blob, _repository_blob, _manifest, _tag, _upload)}
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(tables[table])).scalar_one())
