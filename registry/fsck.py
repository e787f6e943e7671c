"""``hangar registry fsck``: the integrity check of a registry's database against its blob store.

What it checks (every finding is a ``Problem``; ``--repair`` fixes what can be fixed without
losing anything that is still good):

===========================  ==========================================  ==================================
problem                      meaning                                     ``--repair``
===========================  ==========================================  ==================================
``database``                 SQLite's ``quick_check`` failed             nothing (restore a backup)
``missing-blob``             a blob row whose bytes are gone             rows dropped: a push uploads it again
``size-mismatch``            bytes of another size than the row's        bytes and rows dropped (as above)
``digest-mismatch``          bytes that do not hash to their digest      bytes and rows dropped (as above)
``orphan-row``               a row pointing at a row that is gone        row deleted
``missing-link``             a manifest's blob not linked into its repo  link added (the bytes are good)
``missing-reference``        a manifest's blob not in its reference      reference added (else GC could
                             rows                                        delete the blob)
``corrupt-manifest``         stored bytes that do not match the digest   manifest (and its tags) deleted
``broken-manifest``          a manifest needing a blob or child that     nothing: pushing the model again
                             is gone                                     restores it
``stray-blob``               bytes under no blob row (a crash between    deleted when older than the grace
                             publishing and recording them)              period (filesystem store only)
``stale-upload``             an upload row whose data is gone            row deleted after the grace period
``unused-row``               a blob row nothing uses whose bytes are     row deleted (gc's own step)
                             gone (gc killed between the two deletes)
===========================  ==========================================  ==================================

The last three are what a crash leaves by design (``LEFTOVERS``); the rest are faults, and
``Report.clean`` (the exit status) is false while one is left. Every blob's size is checked; its
digest is sampled: one random 16 MiB chunk of each blob whose
chunk sums are recorded, and ``sample`` whole blobs chosen at random (``full`` hashes them all).

Besides ``registry.meta`` and ``registry.accounts``, this is the one module that issues SQL: it
reads the tables whole, below ``Metadata``'s per-request methods, and repairs row by row, each in
its own short transaction, re-checking the condition it repairs, so that it is safe to run while
the registry serves. Bytes that fail a check are deleted only after a second look finds them still
wrong.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, and_, delete, exists, or_, select
from sqlalchemy.engine import Engine

from formats.digest import Digest, InvalidDigest
from formats.manifest import Manifest as ParsedManifest
from formats.manifest import ManifestError
from registry.db import read_transaction, utcnow, write_transaction
from registry.gc import collect
from registry.meta import Metadata
from registry.models import (
    Blob,
    Manifest,
    ManifestReference,
    ManifestSummary,
    ModelSummary,
    PullCount,
    Repository,
    RepositoryBlob,
    Tag,
    Upload,
)
from registry.storage import BlobNotFound, VerifiedStore

log = logging.getLogger("hangar.registry.fsck")

_repository = cast(Table, Repository.__table__)
_blob = cast(Table, Blob.__table__)
_repository_blob = cast(Table, RepositoryBlob.__table__)
_manifest = cast(Table, Manifest.__table__)
_reference = cast(Table, ManifestReference.__table__)
_tag = cast(Table, Tag.__table__)
_upload = cast(Table, Upload.__table__)
_pull_count = cast(Table, PullCount.__table__)
_manifest_summary = cast(Table, ManifestSummary.__table__)
_model_summary = cast(Table, ModelSummary.__table__)

# What a crash leaves behind by design (bytes published whose row was not yet written, a
# session whose data a crash lost, a row whose bytes a killed gc deleted): worth removing, not a
# fault. Every other kind is one.
LEFTOVERS = frozenset({"stray-blob", "stale-upload", "unused-row"})


@dataclass
class Problem:
    kind: str
    subject: str
    detail: str
    repaired: bool = False

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}" + (" [repaired]" if self.repaired else "")


@dataclass
class Report:
    blobs: int = 0
    blob_bytes: int = 0
    hashed: int = 0  # whole blobs hashed
    hashed_bytes: int = 0  # bytes read to check digests (whole blobs and sampled chunks)
    manifests: int = 0
    repositories: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing is left wrong: every fault found (if any) was repaired; leftovers of crashes
        (``LEFTOVERS``) may remain until their grace period ends."""
        return all(p.repaired or p.kind in LEFTOVERS for p in self.problems)

    def summary(self) -> str:
        left = [p for p in self.problems if not p.repaired]
        return (
            f"checked {self.repositories} repositories, {self.manifests} manifests, {self.blobs} blobs "
            f"({self.blob_bytes} bytes; {self.hashed} hashed whole, {self.hashed_bytes} bytes read): "
            f"{len(self.problems)} problem(s), {len(self.problems) - len(left)} repaired, {len(left)} left"
        )


@dataclass
class _BlobRow:
    digest: str
    size: int
    chunk_size: int | None
    chunk_sums: list[str]


class Fsck:
    """One run over a registry: ``await Fsck(meta, store).run()``."""

    def __init__(
        self,
        meta: Metadata,
        store: VerifiedStore,
        *,
        repair: bool = False,
        sample: int = 16,
        full: bool = False,
        grace: float = 3600.0,
        seed: int | None = None,
        on_problem: Callable[[Problem], None] | None = None,
    ) -> None:
        self.engine: Engine = meta.engine
        self.meta = meta
        self.store = store
        self.repair = repair
        self.sample = sample
        self.full = full
        self.grace = grace
        self.random = random.Random(seed)
        self.report = Report()
        self._on_problem = on_problem

    def _found(self, kind: str, subject: str, detail: str, repaired: bool = False) -> Problem:
        problem = Problem(kind, subject, detail, repaired)
        self.report.problems.append(problem)
        if self._on_problem is not None:
            self._on_problem(problem)
        return problem

    async def run(self) -> Report:
        self._check_database()
        self._check_orphans()
        lost = await self._check_blobs()
        await self._check_strays()
        self._check_manifests(lost)
        await self._check_uploads()
        return self.report

    # -- the database ------------------------------------------------------------------------

    def _check_database(self) -> None:
        if self.engine.dialect.name != "sqlite":
            return  # PostgreSQL checks its own pages; its constraints keep the rows consistent
        with read_transaction(self.engine) as conn:
            answers = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check").all()]
        if answers != ["ok"]:
            self._found("database", str(self.engine.url.database), "; ".join(answers[:5]))

    def _check_orphans(self) -> None:
        """Rows whose parent row is gone (SQLite enforces foreign keys only on the connections
        that ask it to, and ``manifest_reference``, ``pull_count`` have none to enforce)."""
        checks: list[tuple[str, Table, Any, Any]] = [
            ("repository_blob", _repository_blob, _repository_blob.c.digest,
             ~exists().where(_blob.c.digest == _repository_blob.c.digest)),
            ("repository_blob", _repository_blob, _repository_blob.c.digest,
             ~exists().where(_repository.c.id == _repository_blob.c.repository_id)),
            ("manifest", _manifest, _manifest.c.digest, ~exists().where(_repository.c.id == _manifest.c.repository_id)),
            ("manifest_reference", _reference, _reference.c.digest,
             ~exists().where(_manifest.c.id == _reference.c.manifest_id)),
            ("tag", _tag, _tag.c.name,
             ~exists().where(and_(_manifest.c.id == _tag.c.manifest_id,
                                  _manifest.c.repository_id == _tag.c.repository_id))),
            ("manifest_summary", _manifest_summary, _manifest_summary.c.manifest_id,
             ~exists().where(_manifest.c.id == _manifest_summary.c.manifest_id)),
            ("model_summary", _model_summary, _model_summary.c.repository_id,
             ~exists().where(_repository.c.id == _model_summary.c.repository_id)),
            ("pull_count", _pull_count, _pull_count.c.tag,
             ~exists().where(_repository.c.id == _pull_count.c.repository_id)),
            ("upload", _upload, _upload.c.id, ~exists().where(_repository.c.id == _upload.c.repository_id)),
        ]  # fmt: skip
        for name, table, label, orphaned in checks:
            with read_transaction(self.engine) as conn:
                count = len(conn.execute(select(label).where(orphaned)).all())
            if not count:
                continue
            repaired = False
            if self.repair:
                with write_transaction(self.engine) as conn:
                    conn.execute(delete(table).where(orphaned))
                repaired = True
            self._found("orphan-row", name, f"{count} row(s) point at rows that are gone", repaired)

    # -- blobs -------------------------------------------------------------------------------

    def _blob_rows(self) -> list[_BlobRow]:
        """The rows to check: not those held (an upload publishing the bytes, gc deleting them:
        ``registry.gc``), whose bytes are not there yet or any more, by design."""
        cols = (_blob.c.digest, _blob.c.size, _blob.c.chunk_size, _blob.c.chunk_sums)
        free = or_(_blob.c.held_until.is_(None), _blob.c.held_until <= utcnow())
        with read_transaction(self.engine) as conn:
            rows = conn.execute(select(*cols).where(free).order_by(_blob.c.digest)).all()
        return [_BlobRow(r[0], int(r[1]), r[2], (r[3] or "").split()) for r in rows]

    async def _check_blobs(self) -> set[str]:
        """Every blob row's bytes: present, of its size, and (sampled) of its digest. Returns the
        digests found lost (so the manifests needing them are reported)."""
        rows = self._blob_rows()
        self.report.blobs = len(rows)
        whole = (
            {r.digest for r in rows}
            if self.full
            else {r.digest for r in self.random.sample(rows, min(self.sample, len(rows)))}
        )
        lost: set[str] = set()
        for row in rows:
            self.report.blob_bytes += row.size
            problem = await self._check_blob(row, row.digest in whole)
            if problem is None:
                continue
            kind, detail = problem
            if kind == "missing-blob" and not self.meta.blob_in_use(row.digest):
                # What a gc killed between deleting the bytes and the row leaves (registry.gc).
                repaired = self.repair and await collect(self.meta, self.store, row.digest, utcnow())
                self._found("unused-row", row.digest, "a blob row nothing uses, its bytes deleted", repaired)
                continue
            lost.add(row.digest)
            repaired = self.repair and await self._drop_blob(row, kind)
            self._found(kind, row.digest, detail, repaired)
        return lost

    async def _check_blob(self, row: _BlobRow, whole: bool) -> tuple[str, str] | None:
        try:
            digest = Digest.parse(row.digest)
        except InvalidDigest:
            return "digest-mismatch", "the row's digest is not a sha256 digest"
        try:
            info = await self.store.stat(digest)
        except BlobNotFound:
            return "missing-blob", f"no bytes in the store for a {row.size}-byte blob"
        if info.size != row.size:
            return "size-mismatch", f"the store holds {info.size} bytes; the database says {row.size}"
        if whole:
            self.report.hashed += 1
            actual = await self._hash(digest, 0, None)
            if actual != digest.hex:
                return "digest-mismatch", f"the bytes hash to sha256:{actual}"
        elif row.chunk_sums and row.chunk_size:
            index = self.random.randrange(len(row.chunk_sums))
            start = index * row.chunk_size
            length = min(row.chunk_size, row.size - start)
            if length > 0 and await self._hash(digest, start, length) != row.chunk_sums[index]:
                return "digest-mismatch", f"chunk {index} (bytes {start}-{start + length - 1}) is not what was pushed"
        return None

    async def _hash(self, digest: Digest, offset: int, length: int | None) -> str:
        h = hashlib.sha256()
        try:
            async for data in self.store.read(digest, offset, length):
                h.update(data)
                self.report.hashed_bytes += len(data)
        except BlobNotFound:
            return "missing"
        return h.hexdigest()

    async def _drop_blob(self, row: _BlobRow, kind: str) -> bool:
        """Forget a lost or damaged blob: its bytes (looked at again first, in case a push just
        replaced them with good ones) and its rows, so that HEAD answers 404 and the next push of
        any model needing it uploads it again. Manifests that need it stay, and are reported."""
        digest = Digest.parse(row.digest)
        if kind != "missing-blob" and await self._check_blob(row, whole=True) is None:
            return False  # good bytes now: a push replaced them meanwhile
        if kind != "missing-blob":
            await self.store.delete(digest)
        with write_transaction(self.engine) as conn:
            conn.execute(delete(_repository_blob).where(_repository_blob.c.digest == row.digest))
            conn.execute(delete(_blob).where(_blob.c.digest == row.digest))
        log.warning("fsck: dropped blob %s (%s)", row.digest, kind)
        return True

    async def _check_strays(self) -> None:
        """Bytes in the store that no blob row names: space only (nothing serves them). Removed
        after the grace period (an upload claims the row before it publishes, so these are what a
        crash left); only where the store can tell a blob's age (the filesystem)."""
        with read_transaction(self.engine) as conn:
            known = set(conn.execute(select(_blob.c.digest)).scalars())
        blob_path = cast(Callable[[Digest], Path] | None, getattr(self.store.backend, "blob_path", None))
        async for info in self.store.list():
            if str(info.digest) in known:
                continue
            repaired = False
            if self.repair and blob_path is not None:
                try:
                    age = time.time() - os.stat(blob_path(info.digest)).st_mtime
                except FileNotFoundError:
                    continue
                with read_transaction(self.engine) as conn:
                    recorded = conn.execute(select(_blob.c.digest).where(_blob.c.digest == str(info.digest))).first()
                if age > self.grace and recorded is None:
                    await self.store.delete(info.digest)
                    repaired = True
            self._found("stray-blob", str(info.digest), f"{info.size} bytes that no blob row names", repaired)

    # -- manifests ---------------------------------------------------------------------------

    def _check_manifests(self, lost: set[str]) -> None:
        with read_transaction(self.engine) as conn:
            self.report.repositories = len(conn.execute(select(_repository.c.id)).all())
            manifests = conn.execute(
                select(_manifest.c.id, _manifest.c.repository_id, _manifest.c.digest, _manifest.c.media_type,
                       _manifest.c.size, _manifest.c.content, _repository.c.name)
                .select_from(_manifest.join(_repository, _repository.c.id == _manifest.c.repository_id))
                .order_by(_manifest.c.id)
            ).all()  # fmt: skip
        self.report.manifests = len(manifests)
        for manifest_id, repo_id, digest, media_type, size, content, repo_name in manifests:
            subject = f"{repo_name}@{digest}"
            raw = bytes(content)
            if Digest.of_bytes(raw).hex != str(digest).removeprefix("sha256:") or len(raw) != size:
                repaired = False
                if self.repair:
                    repaired = self.meta.delete_manifest(repo_name, Digest.parse(digest))
                self._found("corrupt-manifest", subject, "the stored bytes do not match the digest", repaired)
                continue
            try:
                parsed = ParsedManifest.parse(raw, media_type)
            except ManifestError as e:
                self._found("corrupt-manifest", subject, f"the stored manifest does not parse: {e}")
                continue
            self._check_references(manifest_id, repo_id, subject, parsed, lost)

    def _check_references(
        self, manifest_id: int, repo_id: int, subject: str, parsed: ParsedManifest, lost: set[str]
    ) -> None:
        blobs = {str(d.digest) for d in parsed.blobs()}
        children = {str(d.digest) for d in parsed.manifests}
        with read_transaction(self.engine) as conn:
            refs = set(
                conn.execute(select(_reference.c.digest).where(_reference.c.manifest_id == manifest_id)).scalars()
            )
            present = set(conn.execute(select(_blob.c.digest).where(_blob.c.digest.in_(blobs))).scalars())
            linked = set(
                conn.execute(
                    select(_repository_blob.c.digest).where(
                        _repository_blob.c.repository_id == repo_id, _repository_blob.c.digest.in_(blobs)
                    )
                ).scalars()
            )
            child_rows = set(
                conn.execute(
                    select(_manifest.c.digest).where(
                        _manifest.c.repository_id == repo_id, _manifest.c.digest.in_(children)
                    )
                ).scalars()
            )
        unrecorded = sorted((blobs | children) - refs)
        if unrecorded:
            repaired = self.repair and self._add_rows(
                _reference, [{"manifest_id": manifest_id, "digest": d} for d in unrecorded]
            )
            self._found("missing-reference", subject, f"needs {', '.join(unrecorded)} but does not record it", repaired)
        unlinked = sorted((blobs & present) - linked - lost)
        if unlinked:
            repaired = self.repair and self._add_rows(
                _repository_blob, [{"repository_id": repo_id, "digest": d, "created_at": utcnow()} for d in unlinked]
            )
            self._found("missing-link", subject, f"{', '.join(unlinked)} not linked into the repository", repaired)
        gone = sorted((blobs - present) | (blobs & lost) | (children - child_rows))
        if gone:
            self._found(
                "broken-manifest", subject, f"needs {', '.join(gone)}, which the registry does not have; push it again"
            )

    def _add_rows(self, table: Table, rows: list[dict[str, Any]]) -> bool:
        with write_transaction(self.engine) as conn:
            for row in rows:  # one by one, each only if absent (a push may have added it meanwhile)
                key = and_(*(table.c[k] == v for k, v in row.items() if table.c[k].primary_key))
                if conn.execute(select(*table.primary_key.columns).where(key)).first() is None:
                    conn.execute(table.insert().values(**row))
        return True

    # -- uploads -----------------------------------------------------------------------------

    async def _check_uploads(self) -> None:
        """Upload rows whose data is gone (the client will get 404 and start again): removed
        after the grace period. Data without a row is ``hangar registry gc``'s to purge."""
        cutoff = utcnow() - dt.timedelta(seconds=self.grace)
        with read_transaction(self.engine) as conn:
            rows = conn.execute(select(_upload.c.id, _upload.c.updated_at)).all()
        stored = {u.upload_id async for u in self.store.list_uploads()}
        for upload_id, updated_at in rows:
            if upload_id in stored:
                continue
            repaired = False
            if self.repair and updated_at < cutoff:
                with write_transaction(self.engine) as conn:
                    conn.execute(delete(_upload).where(_upload.c.id == upload_id, _upload.c.updated_at < cutoff))
                repaired = True
            self._found("stale-upload", upload_id, "an upload session whose data is gone", repaired)
