"""The local model store, in Ollama's layout so that either tool can use the other's models::

    <HANGAR_MODELS>/
      manifests/<host>/<namespace>/<model>/<tag>   manifest JSON, bytes as pulled or created
      blobs/sha256-<hex>                           a verified blob, shared by every model using it
      blobs/sha256-<hex>-partial                   data of a download in progress (sparse)
      blobs/sha256-<hex>-partial.json              which parts of it are done (see client.pull)
      .hangar/tmp/                                 files being written, renamed into place when whole
      .hangar/locks/                               flock files serialising work on one blob or name (removed on release)
      .hangar/push/                                upload sessions to resume (see client.push)
      .hangar/unflushed/sha256-<hex>               a blob published before it reached the disk
      .hangar/links/sha256-<hex>                   a blob hard-linked to a user's file (--link): what it was

A model's ID is the sha256 of its manifest file. Blob file names use ``sha256-``; JSON uses
``sha256:``. Everything becomes visible by ``os.replace`` after it is complete and verified, so
a crash at any point leaves the store consistent: at worst a stale partial or temp file, which
``hangar prune`` removes. The locks make concurrent processes wait for one another; correctness
never depends on them (the renames are atomic anyway).

A pulled blob may be published before its bytes reach the disk (``fsync = "deferred"``, the
default), so a pull is not held to the disk's speed where that is slower than the network. Before
the rename, a small marker naming the blob and this boot is made durable. A killed process loses
nothing (the page cache survives it); a power cut or kernel crash can, and only then does the
boot change. So :meth:`Store.settle` re-verifies the marked blobs of an earlier boot and removes
the damaged ones (a pull fetches them again), and flushes those of this boot once the kernel has
had time to write them back. Commands and the runtime call it before they use the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from client.errors import InvalidName, ModelNotFound
from formats import mediatypes as mt
from formats.digest import Digest
from formats.manifest import Manifest, ManifestError
from formats.names import ModelName, NameParseError

COPY_CHUNK = 4 * 1024 * 1024
# Linux writes dirty pages back after 30 s (vm.dirty_expire_centisecs); by this age flushing a
# marked blob rarely has to wait for the disk.
SETTLE_AFTER = 60.0
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
FICLONE = 0x40049409  # linux/fs.h, _IOW(0x94, 9, int): share the source's extents (btrfs, XFS, bcachefs)

# How a file became a blob: its extents shared copy-on-write, its bytes copied, the file itself
# hard-linked (``--link``), or already there.
ImportMethod = Literal["cloned", "copied", "linked", "present"]


@dataclass(frozen=True)
class ImportedBlob:
    digest: Digest
    size: int
    method: ImportMethod


def _clone(src: BinaryIO, dst: BinaryIO) -> bool:
    """Clone ``src``'s extents into the empty ``dst`` (FICLONE); False where the filesystem or
    the pair of files cannot (ext4, tmpfs, two filesystems)."""
    try:
        fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
    except OSError:
        return False
    return True


def _hash_file(path: Path) -> Digest:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            h.update(chunk)
    return Digest(h.hexdigest())


def current_boot_id() -> str | None:
    """This boot's random id (Linux), or None where there is none: then nothing is deferred."""
    try:
        return BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        return None


@dataclass
class SettleReport:
    flushed: list[Digest] = field(default_factory=list)  # marked in this boot, now on disk
    verified: list[Digest] = field(default_factory=list)  # marked in an earlier boot, intact
    removed: list[Digest] = field(default_factory=list)  # marked in an earlier boot, damaged: deleted
    skipped: list[Digest] = field(default_factory=list)  # not ours to touch (permissions)


@dataclass(frozen=True)
class LocalModel:
    name: ModelName
    manifest: Manifest
    path: Path

    @property
    def id(self) -> str:
        """The sha256 hex of the manifest file bytes (Ollama's model digest)."""
        return hashlib.sha256(self.manifest.raw).hexdigest()

    @property
    def size(self) -> int:
        return sum(d.size for d in self.manifest.blobs())

    @property
    def modified(self) -> float:
        return self.path.stat().st_mtime


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests_dir = root / "manifests"
        self.blobs_dir = root / "blobs"
        self.state_dir = root / ".hangar"
        self.tmp_dir = self.state_dir / "tmp"
        self.locks_dir = self.state_dir / "locks"
        self.push_dir = self.state_dir / "push"
        self.unflushed_dir = self.state_dir / "unflushed"
        self.links_dir = self.state_dir / "links"
        self.boot_id = current_boot_id()

    def ensure(self) -> Store:
        for d in (self.manifests_dir, self.blobs_dir, self.tmp_dir, self.locks_dir, self.push_dir, self.unflushed_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    # -- names -----------------------------------------------------------------------------

    def parse_name(self, text: str, default_host: str) -> ModelName:
        """Parse a model name and adopt the spelling of any existing model that matches it
        case-insensitively (as Ollama does)."""
        try:
            name = ModelName.parse(text, default_host=default_host)
        except NameParseError as e:
            raise InvalidName(str(e)) from None
        return self.resolve(name)

    def resolve(self, name: ModelName) -> ModelName:
        parts = list(name.parts())
        directory = self.manifests_dir
        for i, part in enumerate(parts):
            try:
                match = next((e.name for e in directory.iterdir() if e.name.lower() == part.lower()), None)
            except (FileNotFoundError, NotADirectoryError):
                break
            if match is None:
                break
            parts[i] = match
            directory = directory / match
        host, namespace, model, tag = parts
        return ModelName(host, namespace, model, tag, scheme=name.scheme)

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.parts())

    # -- manifests -------------------------------------------------------------------------

    def get(self, name: ModelName) -> LocalModel:
        path = self.manifest_path(name)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ModelNotFound(name.display()) from None
        try:
            # The store holds image manifests only (pull and import refuse indexes): one that does
            # not name its media type is an image, whatever keys it has (a stray "manifests" must
            # not make it an index with no blobs, which prune would then delete).
            manifest = Manifest.parse(raw, default=mt.OCI_MANIFEST)
        except ManifestError as e:
            raise ModelNotFound(f"{name.display()} (its manifest is unreadable: {e})") from None
        return LocalModel(name, manifest, path)

    def put_manifest(self, name: ModelName, raw: bytes) -> None:
        """Write (or replace) a manifest atomically."""
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.temp_file() as (tmp, f):
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)

    def delete_manifest(self, name: ModelName) -> None:
        path = self.manifest_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ModelNotFound(name.display()) from None
        # Remove directories left empty, up to manifests/.
        for parent in path.parents:
            if parent == self.manifests_dir:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def models(self) -> list[LocalModel]:
        """Every model with a readable manifest (exactly four levels under manifests/)."""
        found = []
        for path in sorted(self.manifests_dir.glob("*/*/*/*")):
            if not path.is_file():
                continue
            rel = path.relative_to(self.manifests_dir).parts
            try:
                found.append(self.get(ModelName(*rel)))
            except ModelNotFound:
                continue
        return found

    def referenced_digests(self) -> set[Digest]:
        return {d.digest for model in self.models() for d in model.manifest.blobs()}

    # -- blobs -----------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.filename

    def partial_path(self, digest: Digest) -> Path:
        return self.blobs_dir / f"{digest.filename}-partial"

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        try:
            st = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def add_blob_file(self, source: Path) -> tuple[Digest, int]:
        """Copy (or clone) a file into the store under its digest; returns (digest, size)."""
        imported = self.import_file(source)
        return imported.digest, imported.size

    def import_file(self, source: Path, *, link: bool = False) -> ImportedBlob:
        """Make a user's file a blob without a second copy where the filesystem allows.

        By default its extents are cloned copy-on-write (instant, no extra space, and editing the
        original later cannot touch the blob), else its bytes are copied. ``link`` hard-links the
        file itself instead: no space either, on any filesystem, but the blob is then the user's
        file, so its size and modification time are recorded and :meth:`linked_change` reports a
        blob whose file was edited since (the runtime then refuses it)."""
        if link:
            return self._link_in(source)
        with self.temp_file() as (tmp, out), open(source, "rb") as src:
            if _clone(src, out):
                method: ImportMethod = "cloned"
                digest = _hash_file(tmp)  # the clone, not the source: what was hashed is what is kept
            else:
                method = "copied"
                h = hashlib.sha256()
                while chunk := src.read(COPY_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                digest = Digest(h.hexdigest())
            out.flush()
            os.fsync(out.fileno())
            size = os.fstat(out.fileno()).st_size
            if self.has_blob(digest, size) and not self._link_record(digest).exists():
                return ImportedBlob(digest, size, "present")
            self._forget_link(digest)
            self._publish(tmp, digest)
            return ImportedBlob(digest, size, method)

    def _link_in(self, source: Path) -> ImportedBlob:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"link-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.link(source, tmp)
        except OSError as e:
            raise OSError(
                e.errno,
                f"cannot hard-link {source} into the store at {self.root} ({e.strerror}): --link needs both"
                " on one filesystem; without --link the file is cloned or copied",
            ) from None
        try:
            before = os.stat(tmp)
            digest = _hash_file(tmp)
            after = os.stat(tmp)
            if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
                raise OSError(f"{source} changed while it was being hashed; try again once it is written")
            if self.has_blob(digest, after.st_size) and not os.path.samefile(tmp, self.blob_path(digest)):
                return ImportedBlob(digest, after.st_size, "present")  # a blob of its own already
            record = self._link_record(digest)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(
                json.dumps({"source": str(source), "size": after.st_size, "mtime_ns": after.st_mtime_ns}) + "\n"
            )
            os.replace(tmp, self.blob_path(digest))  # not _publish: chmod would change the user's file
            return ImportedBlob(digest, after.st_size, "linked")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def linked_change(self, digest: Digest) -> str | None:
        """Why a blob hard-linked with ``--link`` can no longer be trusted (its file was edited:
        the size or modification time differs from when it was hashed), or None."""
        record = self._link_record(digest)
        try:
            recorded = json.loads(record.read_text())
            st = self.blob_path(digest).stat()
        except (FileNotFoundError, ValueError):
            return None
        if (st.st_size, st.st_mtime_ns) == (recorded.get("size"), recorded.get("mtime_ns")):
            return None
        return (
            f"{recorded.get('source', 'its file')} was linked into the store with --link and has changed since"
            f" ({recorded.get('size')} → {st.st_size} bytes or a new modification time): the blob {digest} no"
            " longer matches its digest; create the model again from the new file"
        )

    def _link_record(self, digest: Digest) -> Path:
        return self.links_dir / digest.filename

    def _forget_link(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._link_record(digest).unlink()

    def adopt_file(self, path: Path) -> tuple[Digest, int]:
        """Hash a file written in the store's temporary folder, flush it, and move it into place."""
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(COPY_CHUNK):
                h.update(chunk)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        digest = Digest(h.hexdigest())
        self._publish(path, digest)
        return digest, os.path.getsize(self.blob_path(digest))

    def add_blob_bytes(self, data: bytes) -> tuple[Digest, int]:
        digest = Digest.of_bytes(data)
        if not self.has_blob(digest, len(data)):
            with self.temp_file() as (tmp, out):
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
                self._publish(tmp, digest)
        return digest, len(data)

    def publish_blob(self, path: Path, digest: Digest, *, deferred: bool = False) -> None:
        """Move a verified file into place under its digest. ``deferred``: the caller has not
        flushed it; a durable marker makes :meth:`settle` check the blob should the machine
        restart before its bytes reach the disk."""
        if deferred:
            if self.boot_id is None:
                _fsync_path(path)  # no way to tell a restart: flush now
            else:
                self._mark_unflushed(digest)
        self._publish(path, digest)

    def _mark_unflushed(self, digest: Digest) -> None:
        self.unflushed_dir.mkdir(parents=True, exist_ok=True)
        with self.temp_file() as (tmp, f):  # a crash leaves a temp file, which prune removes
            f.write(f"{self.boot_id}\n".encode())
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, self.unflushed_dir / digest.filename)
        _fsync_path(self.unflushed_dir)  # the marker is on disk before the blob has its name

    def unflushed(self) -> list[Digest]:
        """Blobs published before they were known to be on disk (see :meth:`settle`)."""
        try:
            names = os.listdir(self.unflushed_dir)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            with contextlib.suppress(ValueError):
                found.append(Digest.parse_lenient(name))
        return sorted(found)

    def settle(
        self, *, min_age: float = SETTLE_AFTER, on_verify: Callable[[Digest, int], None] | None = None
    ) -> SettleReport:
        """Resolve the markers left by deferred flushes: after a restart, re-verify each marked
        blob and delete it if damaged (``on_verify(digest, size)`` is called before each such
        check, which reads the whole blob); in this boot, fsync marked blobs older than
        ``min_age`` seconds. Safe to run from several processes at once."""
        report = SettleReport()
        for digest in self.unflushed():
            try:
                self._settle_one(digest, min_age, on_verify, report)
            except PermissionError:
                report.skipped.append(digest)  # another user's store: theirs to settle
        return report

    def _settle_one(
        self, digest: Digest, min_age: float, on_verify: Callable[[Digest, int], None] | None, report: SettleReport
    ) -> None:
        marker = self.unflushed_dir / digest.filename
        blob = self.blob_path(digest)
        with self.lock(f"blob-{digest.hex}"):
            try:
                boot = marker.read_text().strip()
                age = time.time() - marker.stat().st_mtime
            except FileNotFoundError:
                return  # another process settled it
            if not blob.exists():
                pass  # deleted since (rm, prune): nothing to check
            elif boot == self.boot_id:
                if age < min_age:
                    return
                _fsync_path(blob)
                report.flushed.append(digest)
            else:
                if on_verify is not None:
                    on_verify(digest, blob.stat().st_size)
                if Digest.of_file(blob) == digest:
                    _fsync_path(blob)
                    report.verified.append(digest)
                else:
                    self.delete_blob(digest)
                    report.removed.append(digest)
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()

    def _publish(self, path: Path, digest: Digest) -> None:
        os.chmod(path, 0o644)
        os.replace(path, self.blob_path(digest))

    def delete_blob(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(digest).unlink()
        self._forget_link(digest)

    # -- files and locks -------------------------------------------------------------------

    @contextlib.contextmanager
    def temp_file(self) -> Iterator[tuple[Path, BinaryIO]]:
        """A temporary file in the store's filesystem; removed unless renamed away."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                yield path, f
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """An exclusive lock between processes (blocking).

        The lock file is removed on release (one per blob ever pulled would pile up otherwise),
        while it is still held. A process that opened the file before that and was waiting for it
        then holds a lock on a file no longer at the path, which excludes no one: so after
        acquiring, a locker checks that the path still names the file it locked, and starts
        over if not."""
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        path = self.locks_dir / f"{key}.lock"
        while True:
            f = open(path, "a")  # noqa: SIM115 (closed below, or on release)
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                held = os.fstat(f.fileno())
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    current = None
            except BaseException:
                f.close()
                raise
            if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
                break
            f.close()  # unlinked (or replaced) by the holder we waited for: lock the new file
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # still holding it: waiters on this file will start over
            f.close()  # releases the flock

    def free_space(self) -> int:
        return shutil.disk_usage(self.blobs_dir if self.blobs_dir.exists() else self.root).free


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
