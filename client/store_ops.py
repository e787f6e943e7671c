"""Store operations that need no registry: copy, remove, prune."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from client.config import ClientSettings, load
from client.progress import human_size
from client.store import LocalModel, SettleReport, Store
from formats.digest import Digest, InvalidDigest
from formats.names import ModelName


def copy_model(store: Store, source: ModelName, destination: ModelName) -> LocalModel:
    """Give a model a second name: the manifest is copied byte for byte, blobs are shared."""
    model = store.get(source)
    with store.lock("manifests"):
        store.put_manifest(destination, model.manifest.raw)
    return store.get(destination)


@dataclass
class Removal:
    models: list[ModelName] = field(default_factory=list)
    blobs: list[Digest] = field(default_factory=list)
    freed: int = 0


def remove_models(store: Store, names: list[ModelName]) -> Removal:
    """Delete the manifests, then every blob of theirs that no remaining model uses."""
    with store.lock("manifests"):
        candidates: set[Digest] = set()
        for name in names:
            model = store.get(name)
            candidates |= {d.digest for d in model.manifest.blobs()}
            store.delete_manifest(name)
        result = delete_unused_blobs(store, candidates)
    result.models = list(names)
    return result


def delete_unused_blobs(store: Store, candidates: set[Digest]) -> Removal:
    """Delete the candidates no model references. The caller holds the manifests lock: a pull
    writes its manifest under it, after checking its blobs are all still there."""
    result = Removal()
    for digest in sorted(candidates - store.referenced_digests()):
        path = store.blob_path(digest)
        try:
            result.freed += path.stat().st_size
        except FileNotFoundError:
            continue
        store.delete_blob(digest)
        result.blobs.append(digest)
    return result


@dataclass
class PrunePlan:
    blobs: list[tuple[Path, int]] = field(default_factory=list)  # unreferenced blobs
    partials: list[tuple[Path, int]] = field(default_factory=list)  # stale downloads and temp files

    @property
    def size(self) -> int:
        return sum(n for _, n in self.blobs) + sum(n for _, n in self.partials)


def plan_prune(store: Store, grace: float) -> PrunePlan:
    """What ``hangar prune`` would delete: blobs no model references and partial downloads,
    temporary and unknown files, all older than ``grace`` seconds (fresher ones may belong to a
    pull or create that is still running)."""
    plan = PrunePlan()
    cutoff = time.time() - grace
    referenced = store.referenced_digests()
    for directory in (store.blobs_dir, store.tmp_dir):
        if not directory.exists():
            continue
        for path in directory.iterdir():
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if not path.is_file() or st.st_mtime > cutoff:
                continue
            try:
                digest = Digest.parse_lenient(path.name) if directory == store.blobs_dir else None
            except InvalidDigest:
                digest = None
            if digest is None:
                plan.partials.append((path, st.st_size))
            elif digest not in referenced:
                plan.blobs.append((path, st.st_size))
    return plan


def prune(store: Store, plan: PrunePlan) -> PrunePlan:
    """Delete what the plan names, re-checking references under the manifests lock."""
    done = PrunePlan()
    with store.lock("manifests"):
        referenced = store.referenced_digests()
        for path, size in plan.blobs:
            if Digest.parse_lenient(path.name) in referenced:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                done.blobs.append((path, size))
        for path, size in plan.partials:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                done.partials.append((path, size))
    return done


def settled_store(say: Callable[[str], None]) -> tuple[ClientSettings, Store]:
    """The settings and the store they name, settled (see :func:`settle_store`): what every
    command that uses the store starts from."""
    settings = load()
    store = Store(settings.models)
    settle_store(store, say)
    return settings, store


def settle_store(store: Store, say: Callable[[str], None]) -> SettleReport:
    """Run :meth:`Store.settle`, telling the user about the slow part (re-checking blobs pulled
    just before the machine restarted) and about any blob it had to remove."""

    def checking(digest: Digest, size: int) -> None:
        say(f"checking {digest.short} ({human_size(size)}): pulled just before this machine restarted")

    report = store.settle(on_verify=checking)
    models = store.models() if report.removed else []
    for digest in report.removed:
        users = [m.name.display() for m in models if any(d.digest == digest for d in m.manifest.blobs())]
        again = f"`hangar pull {' '.join(users)}` fetches it again" if users else "no model uses it"
        say(f"removed {digest.short}: the restart came before it reached the disk and it is damaged; {again}")
    return report
