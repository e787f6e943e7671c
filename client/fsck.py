"""``hangar fsck``: the integrity check of a local model store (Ollama's layout, ``client.store``).

What it checks (every finding is a ``Problem``; ``repair`` fixes what it can without losing
anything still good):

==================  ===========================================  ====================================
problem             meaning                                      ``--repair``
==================  ===========================================  ====================================
``bad-manifest``    a manifest file that is not a manifest       removed (nothing can use it)
``missing-blob``    a model needs a blob the store lacks         nothing: ``hangar pull`` fetches it
``damaged-blob``    a blob of the wrong size or digest           removed (``hangar pull`` fetches it)
``stray-file``      a file where the layout has none             reported only (not ours to delete)
``partial``         a partial download or a temporary file       removed when older than the grace
                                                                 period (a pull may still be at it)
``unused-blob``     a blob no model uses                         reported only (``hangar prune``)
==================  ===========================================  ====================================

Every blob a manifest names is checked for its size and hashed whole (``verify=False``: sizes
only), each blob once however many models share it. The first three are faults (``Report.clean``
is false while one is left); the rest are what a crash or a running pull leaves, or clutter.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from client.store import COPY_CHUNK, Store
from formats import mediatypes as mt
from formats.digest import Digest, InvalidDigest
from formats.manifest import Manifest, ManifestError
from formats.names import ModelName

FAULTS = frozenset({"bad-manifest", "missing-blob", "damaged-blob"})
_PARTIAL_SUFFIXES = ("-partial", "-partial.json", "-partial.json.tmp")  # .tmp: a state save cut short


@dataclass
class Problem:
    kind: str
    subject: str  # a model's name, a digest or a path
    detail: str
    repaired: bool = False

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}" + (" [repaired]" if self.repaired else "")


@dataclass
class Report:
    models: int = 0
    blobs: int = 0
    hashed_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No fault is left (``FAULTS``; clutter and leftovers may be)."""
        return all(p.repaired or p.kind not in FAULTS for p in self.problems)

    def summary(self) -> str:
        left = [p for p in self.problems if not p.repaired]
        return (
            f"checked {self.models} model(s) and {self.blobs} blob(s) ({self.hashed_bytes} bytes hashed): "
            f"{len(self.problems)} problem(s), {len(self.problems) - len(left)} repaired, {len(left)} left"
        )


def fsck(
    store: Store,
    *,
    repair: bool = False,
    verify: bool = True,
    grace: float = 3600.0,
    on_problem: Callable[[Problem], None] | None = None,
) -> Report:
    """Check ``store`` (and repair it with ``repair``); ``on_problem`` hears of each finding."""
    report = Report()

    def found(kind: str, subject: str, detail: str, repaired: bool = False) -> None:
        problem = Problem(kind, subject, detail, repaired)
        report.problems.append(problem)
        if on_problem is not None:
            on_problem(problem)

    needed: dict[Digest, tuple[int, list[str]]] = {}  # digest -> (size, models needing it)
    for path in _manifest_files(store, found):
        name = ModelName(*path.relative_to(store.manifests_dir).parts)
        try:
            manifest = Manifest.parse(path.read_bytes(), default=mt.OCI_MANIFEST)
            if manifest.is_index:
                raise ManifestError("an index, which a store never holds")
        except (OSError, ManifestError) as e:
            found("bad-manifest", name.display(), f"{path} is unreadable: {e}", repair and _unlink(path))
            continue
        report.models += 1
        for desc in manifest.blobs():
            size, users = needed.setdefault(desc.digest, (desc.size, []))
            users.append(name.display())
            if size != desc.size:
                found(
                    "bad-manifest",
                    name.display(),
                    f"says {desc.digest} is {desc.size} bytes; another model says {size}",
                )

    for digest, (size, users) in sorted(needed.items(), key=lambda item: str(item[0])):
        report.blobs += 1
        _check_blob(store, digest, size, users, verify, repair, report, found)

    _check_blob_dir(store, set(needed), grace, repair, found)
    return report


def _manifest_files(store: Store, found: Callable[..., None]) -> list[Path]:
    """Files exactly four levels under manifests/ (host/namespace/model/tag); anything else
    there is reported."""
    out: list[Path] = []
    if not store.manifests_dir.is_dir():
        return out
    for root, dirs, files in os.walk(store.manifests_dir):
        depth = len(Path(root).relative_to(store.manifests_dir).parts)
        for file in files:
            path = Path(root) / file
            if depth == 3:
                out.append(path)
            else:
                found("stray-file", str(path), "a file outside host/namespace/model/tag in manifests/")
        if depth >= 3:
            for d in dirs:
                found("stray-file", str(Path(root) / d), "a folder where a manifest file belongs")
            dirs.clear()
    return sorted(out)


def _check_blob(
    store: Store,
    digest: Digest,
    size: int,
    users: list[str],
    verify: bool,
    repair: bool,
    report: Report,
    found: Callable[..., None],
) -> None:
    path = store.blob_path(digest)
    models = ", ".join(sorted(set(users)))
    with store.lock(f"blob-{digest.hex}"):  # a pull publishing this blob waits, and we for it
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            found("missing-blob", str(digest), f"needed by {models}; `hangar pull` fetches it again")
            return
        problem = None
        if actual_size != size:
            problem = f"{actual_size} bytes, its manifest says {size}"
        elif verify:
            actual = _hash(path, report)
            if actual != digest.hex:
                problem = f"its bytes hash to sha256:{actual}"
        if problem is None:
            return
        found(
            "damaged-blob",
            str(digest),
            f"{problem}; needed by {models}" + ("; removed, `hangar pull` fetches it again" if repair else ""),
            repair and _unlink(path),
        )


def _hash(path: Path, report: Report) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(COPY_CHUNK):
            h.update(data)
            report.hashed_bytes += len(data)
    return h.hexdigest()


def _check_blob_dir(store: Store, needed: set[Digest], grace: float, repair: bool, found: Callable[..., None]) -> None:
    """Partial downloads, temporary files, unused blobs and strangers in blobs/ and .hangar/tmp/."""
    cutoff = time.time() - grace
    for directory, temporary in ((store.blobs_dir, False), (store.tmp_dir, True)):
        try:
            entries = sorted(directory.iterdir())
        except FileNotFoundError:
            continue
        for path in entries:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            partial = temporary or path.name.endswith(_PARTIAL_SUFFIXES)
            if partial:
                old = st.st_mtime < cutoff
                age = f"{(time.time() - st.st_mtime) / 60:.0f} min old"
                detail = f"{st.st_size} bytes, {age}" + (
                    "" if old else "; left: a pull or create may still be writing it"
                )
                found("partial", str(path), detail, repair and old and _unlink(path))
                continue
            try:
                digest = Digest.parse_lenient(path.name)
            except InvalidDigest:
                found("stray-file", str(path), "not a blob's name")
                continue
            if digest not in needed:
                found("unused-blob", str(digest), f"{st.st_size} bytes no model uses; `hangar prune` removes it")


def _unlink(path: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True
