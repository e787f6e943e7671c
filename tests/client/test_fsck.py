"""``hangar fsck``: a local store damaged on purpose is reported, repaired where that loses nothing
good, and whole again after ``hangar pull``."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from client.config import load
from client.fsck import fsck
from client.store import Store
from tests.client.conftest import make_model
from tests.client.test_cli import hangar


def lines_of(kind: str, output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(kind + " ")]


def age(path: Path, seconds: float) -> None:
    os.utime(path, (time.time() - seconds, time.time() - seconds))


def test_fsck_finds_damage_repairs_it_and_a_pull_restores_the_models(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    store = Store(load({"HANGAR_HOME": str(home)}).models).ensure()
    names = {key: make_model(store, f"{registry.host}/team/{key}:v1", os.urandom(300_000 + i))
             for i, key in enumerate(("flipped", "cut", "gone", "fine"))}  # fmt: skip
    for name in names.values():
        hangar(home, "push", str(name))
    clean = hangar(home, "fsck")
    assert clean.stdout.splitlines()[-1].startswith("checked 4 model(s) and ") and "0 problem(s)" in clean.stdout

    weights = {key: store.get(name).manifest.layers[0].digest for key, name in names.items()}
    flipped = store.blob_path(weights["flipped"])
    data = bytearray(flipped.read_bytes())
    data[12345] ^= 1
    flipped.write_bytes(bytes(data))
    with open(store.blob_path(weights["cut"]), "r+b") as f:
        f.truncate(10)
    store.blob_path(weights["gone"]).unlink()
    bad = store.manifests_dir / registry.host / "team" / "junk" / "v1"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    stale_partial = store.blobs_dir / f"sha256-{'a' * 64}-partial"
    stale_partial.write_bytes(b"x" * 100)
    age(stale_partial, 7200)
    fresh_partial = store.blobs_dir / f"sha256-{'b' * 64}-partial"
    fresh_partial.write_bytes(b"y" * 10)
    (store.blobs_dir / "notes.txt").write_text("mine")
    (store.manifests_dir / "README").write_text("mine")

    found = hangar(home, "fsck", check=False)
    assert found.returncode == 1, found.stdout + found.stderr
    out = found.stdout
    assert sorted(lines_of("damaged-blob", out)) == sorted([
        f"damaged-blob {weights['cut']}: 10 bytes, its manifest says 300001; needed by {names['cut'].display()}",
        f"damaged-blob {weights['flipped']}: its bytes hash to sha256:{hashlib.sha256(data).hexdigest()}; "
        f"needed by {names['flipped'].display()}",
    ])  # fmt: skip
    assert lines_of("missing-blob", out) == [
        f"missing-blob {weights['gone']}: needed by {names['gone'].display()}; `hangar pull` fetches it again"
    ]
    assert len(lines_of("bad-manifest", out)) == 1 and "team/junk:v1" in lines_of("bad-manifest", out)[0]
    partials = lines_of("partial", out)
    assert len(partials) == 2 and any("may still be writing it" in line for line in partials)
    assert {line.split(":")[0].split()[1] for line in lines_of("stray-file", out)} == {
        str(store.blobs_dir / "notes.txt"),
        str(store.manifests_dir / "README"),
    }
    # --quick (sizes only) misses the flipped byte but not the truncation.
    quick = fsck(store, verify=False)
    assert {p.subject for p in quick.problems if p.kind == "damaged-blob"} == {str(weights["cut"])}

    repaired = hangar(home, "fsck", "--repair", check=False)
    assert repaired.returncode == 1  # the models still lack blobs: a pull brings them
    assert all("[repaired]" in line for line in lines_of("damaged-blob", repaired.stdout))
    assert not flipped.exists() and not bad.exists() and not stale_partial.exists()
    assert fresh_partial.exists() and (store.blobs_dir / "notes.txt").exists()  # not ours to judge

    for key in ("flipped", "cut", "gone"):
        hangar(home, "pull", str(names[key]))
    fresh_partial.unlink()
    final = hangar(home, "fsck")
    assert lines_of("damaged-blob", final.stdout) == lines_of("missing-blob", final.stdout) == []
    report = fsck(store)
    assert report.clean and report.models == 4 and {p.kind for p in report.problems} == {"stray-file"}
