"""Small real filesystems for the disk-full tests: a tmpfs of a given size mounted by the test
(root, or passwordless sudo), so that writes fail with a real ENOSPC; and a filler file that
leaves a chosen amount of it free."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount_command() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=``, e.g. ``48m``) at ``path`` for the block's length."""
    prefix = _mount_command()
    if prefix is None:
        pytest.skip("mounting a small tmpfs needs root or passwordless sudo")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run([*prefix, "umount", "-l", str(path)], check=False)


def fill(directory: Path, leave: int = 0, name: str = "filler") -> Path:
    """A file that takes all the free space of ``directory``'s filesystem but ``leave`` bytes."""
    filler = directory / name
    block = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        while True:
            free = shutil.disk_usage(directory).free - leave
            if free <= 0:
                break
            try:
                f.write(block[: min(len(block), free)])
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    return filler
