"""Creating a model from a large local file without a second copy (#20): copy-on-write clones on
a filesystem that has them (a real btrfs, loop-mounted by the test), a plain copy where it does
not, hard links only with ``--link``, and a linked file edited afterwards is refused."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.model_info import inspect
from client.store import Store
from formats.digest import Digest
from tests.servers import REPO_ROOT
from tests.tinymodels import write_tiny_llama


def _blocks_used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@contextlib.contextmanager
def _btrfs(size_mb: int = 512) -> Iterator[Path]:
    """A btrfs filesystem in a file, mounted through a loop device (root and mkfs.btrfs needed)."""
    image_dir = Path(tempfile.mkdtemp(prefix="hangar-btrfs-"))
    image, mount = image_dir / "fs.img", image_dir / "mnt"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True, capture_output=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False, capture_output=True)
        shutil.rmtree(image_dir, ignore_errors=True)


can_mount = os.geteuid() == 0 and shutil.which("mkfs.btrfs") is not None
needs_btrfs = pytest.mark.skipif(not can_mount, reason="loop-mounting btrfs needs root and btrfs-progs (setup.sh)")


def test_a_file_on_ext4_or_tmpfs_is_copied_and_independent(tmp_path: Path) -> None:
    store = Store(tmp_path / "models").ensure()
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 << 20))
    imported = store.import_file(source)
    expected = "cloned" if _clones(tmp_path) else "copied"
    assert imported.method == expected
    blob = store.blob_path(imported.digest)
    assert not os.path.samefile(blob, source)
    assert imported.digest == Digest.of_bytes(source.read_bytes()) and imported.size == 3 << 20
    with open(source, "r+b") as f:  # editing the original never touches the blob
        f.write(b"changed")
    assert Digest.of_bytes(blob.read_bytes()) == imported.digest
    assert store.import_file(blob).method == "present"


@needs_btrfs
def test_a_clone_on_btrfs_takes_no_space_and_stays_independent() -> None:
    with _btrfs() as fs:
        store = Store(fs / "models").ensure()
        source = fs / "model.gguf"
        with open(source, "wb") as f:
            for _ in range(96):
                f.write(os.urandom(1 << 20))
        os.sync()
        before = _blocks_used(fs)
        imported = store.import_file(source)
        os.sync()
        grew = _blocks_used(fs) - before
        assert imported.method == "cloned"
        assert grew < 8 << 20, f"a clone of 96 MiB used {grew >> 20} MiB"  # metadata only, not the data
        blob = store.blob_path(imported.digest)
        assert not os.path.samefile(blob, source)
        with open(source, "r+b") as f:  # copy-on-write: the blob keeps the bytes it was hashed with
            f.write(b"\0" * 4096)
        with open(blob, "rb") as f:
            assert Digest.of_bytes(f.read()) == imported.digest
        assert store.linked_change(imported.digest) is None


def test_link_shares_the_file_and_an_edit_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "models").ensure()
    gguf = write_tiny_llama(tmp_path / "tiny.gguf", seed=4)
    imported = store.import_file(gguf, link=True)
    assert imported.method == "linked"
    blob = store.blob_path(imported.digest)
    assert os.path.samefile(blob, gguf) and os.stat(gguf).st_nlink == 2
    assert store.linked_change(imported.digest) is None

    with open(gguf, "ab") as f:  # the user edits "their" file: the blob's bytes change with it
        f.write(b"appended")
    problem = store.linked_change(imported.digest)
    assert problem is not None and str(gguf) in problem and "--link" in problem

    # Removing the blob forgets the record; importing again (without --link) makes a real blob.
    store.delete_blob(imported.digest)
    assert store.linked_change(imported.digest) is None
    again = store.import_file(gguf)
    assert again.method in ("copied", "cloned") and not os.path.samefile(store.blob_path(again.digest), gguf)


def test_link_across_filesystems_is_a_clear_error(tmp_path: Path) -> None:
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("the test needs /dev/shm on another filesystem than the temporary folder")
    store = Store(tmp_path / "models").ensure()
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as other:
        other.write(b"x" * 1000)
        other.flush()
        with pytest.raises(OSError, match="--link needs both on one filesystem"):
            store.import_file(Path(other.name), link=True)
    assert list(store.blobs_dir.iterdir()) == [] and list(store.tmp_dir.iterdir()) == []


def _hangar(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HANGAR_HOME": str(home), "HANGAR_HOST": "127.0.0.1:1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HANGAR_MODELS", None)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=cwd, capture_output=True, text=True)


def test_hangar_create_reports_the_method_and_link_edits_stop_the_model(tmp_path: Path) -> None:
    gguf = write_tiny_llama(tmp_path / "tiny.gguf", seed=5)
    (tmp_path / "Modelfile").write_text("FROM ./tiny.gguf\n")
    home = tmp_path / "home"

    copied = _hangar(home, "create", "copied", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    verb = "cloning file (copy-on-write)" if _clones(tmp_path) else "copying file"
    assert f"{verb} sha256:" in copied.stdout + copied.stderr

    again = _hangar(home, "create", "again", "--link", cwd=tmp_path)  # the blob is there: nothing to link
    assert again.returncode == 0 and "using already stored file sha256:" in again.stdout, again.stderr

    home = tmp_path / "other-home"
    linked = _hangar(home, "create", "linked", "--link", cwd=tmp_path)
    assert linked.returncode == 0, linked.stderr
    assert "linking file sha256:" in linked.stdout + linked.stderr
    store = Store(home / "models")
    model = store.get(store.parse_name("linked", "registry.ollama.ai"))
    assert os.path.samefile(store.blob_path(model.manifest.layers[0].digest), gguf)
    assert inspect(store, model).error == ""

    with open(gguf, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    error = inspect(store, model).error
    assert "was linked into the store with --link and has changed since" in error


def _clones(directory: Path) -> bool:
    """Whether ``directory``'s filesystem clones (so the expectations above hold on btrfs too)."""
    from client.store import _clone

    with open(directory / ".probe-src", "wb") as src, open(directory / ".probe-dst", "wb") as dst:
        src.write(b"probe")
        src.flush()
        with open(directory / ".probe-src", "rb") as readable:
            ok = _clone(readable, dst)
    for name in (".probe-src", ".probe-dst"):
        (directory / name).unlink()
    return ok
