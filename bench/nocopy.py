"""`hangar create` from a 1 GiB GGUF: copied (ext4), cloned copy-on-write (btrfs) and hard-linked
(`--link`): wall time and the extra disk each leaves used. Needs root (it loop-mounts a btrfs).

    sudo .venv/bin/python -m bench.nocopy [--size-gib 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import GiB, MiB, machine, write_section

ROOT = Path(__file__).resolve().parent.parent


def _used(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _gguf(path: Path, size: int) -> None:
    """A loadable llama GGUF of about ``size`` bytes (F32, dim 2048: ~168 MB a layer)."""
    sys.path.insert(0, str(ROOT))
    from tests.tinymodels import write_tiny_llama

    write_tiny_llama(path, dim=2048, layers=max(1, round(size / (168 * MiB))), seed=7)


def _create(home: Path, folder: Path, name: str, *extra: str) -> tuple[float, str]:
    env = {**os.environ, "HANGAR_HOME": str(home), "HANGAR_HOST": "127.0.0.1:1", "PYTHONPATH": str(ROOT)}
    env.pop("HANGAR_MODELS", None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "create", name, *extra],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    lines = done.stdout.splitlines()
    method = next((line.split(" sha256:")[0] for line in lines if " file" in line and "sha256:" in line), "?")
    return seconds, method


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=float, default=1.0)
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("mkfs.btrfs"):
        print("needs root and btrfs-progs (scripts/setup.sh installs it)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="hangar-nocopy-"))
    # Both filesystems are loop-mounted images of their own, so the used blocks count this
    # benchmark's files alone (not whatever else writes to the machine's disk meanwhile).
    mounts = []
    for fs_name, mkfs in (("ext4", ["mkfs.ext4", "-q", "-F"]), ("btrfs", ["mkfs.btrfs", "-q"])):
        image, mount = work / f"{fs_name}.img", work / fs_name
        mount.mkdir()
        with open(image, "wb") as f:
            f.truncate(int((3 * args.size_gib + 1) * GiB))
        subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
        mounts.append((fs_name, mount))
    rows = []
    try:
        for fs_name, mount in mounts:
            folder = mount / "src"
            folder.mkdir(exist_ok=True)
            _gguf(folder / "model.gguf", int(args.size_gib * GiB))
            (folder / "Modelfile").write_text("FROM ./model.gguf\n")
            size = (folder / "model.gguf").stat().st_size
            cases = [("default", ())] + ([("--link", ("--link",))] if fs_name == "ext4" else [])
            for label, extra in cases:
                home = folder.parent / f"home-{fs_name}-{label.strip('-')}"
                before = _used(folder)
                seconds, method = _create(home, folder, f"m-{label.strip('-')}", *extra)
                rows.append((fs_name, label, method, size, seconds, _used(folder) - before))
    finally:
        for _, mount in mounts:
            subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "## `hangar create` from a large GGUF without a second copy",
        "",
        f"`python -m bench.nocopy` on {machine()}: `hangar create` of a {args.size_gib:g} GiB F32 GGUF"
        " (no daemon running), the store on the same filesystem as the file, each filesystem a"
        " loop-mounted image of its own; extra disk is its used blocks after minus before (after `sync`).",
        "",
        "| filesystem | flag | how the file became a blob | file | time | extra disk |",
        "|---|---|---|---:|---:|---:|",
    ]
    for fs_name, label, method, size, seconds, extra_disk in rows:
        lines.append(
            f"| {fs_name} | {label} | {method} | {size / GiB:.2f} GiB | {seconds:.2f} s | {extra_disk / MiB:,.0f} MiB |"
        )
    copy = next(r for r in rows if r[0] == "ext4" and r[1] == "default")
    clone = next(r for r in rows if r[0] == "btrfs")
    lines += [
        "",
        f"Cloning saves {copy[5] / MiB:,.0f} MiB of disk and takes {clone[4] / copy[4]:.2f}× the copy's time"
        " (what remains is hashing the file once, which every method does: a blob is named by its digest).",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("nocopy", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
