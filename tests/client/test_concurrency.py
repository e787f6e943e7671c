"""Two processes pulling the same model into one store at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from registry.storage import CHUNK_SIZE
from tests.servers import REPO_ROOT


def test_two_concurrent_pulls_into_one_store(people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    name = alice.model(f"{alice.name}/shared", size=2 * CHUNK_SIZE)
    alice.push(name)
    env = {**os.environ, "HANGAR_HOME": str(tmp_path / "shared-home")}
    command = [sys.executable, "-m", "cli.main", "pull", str(name)]
    procs = [
        subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(out.strip().endswith("success") for out in outputs)

    from client.config import load
    from client.store import Store

    store = Store(load(env).models)
    model = store.get(name)
    assert model.manifest.raw == alice.store.get(name).manifest.raw
    blobs = sorted(p.name for p in store.blobs_dir.iterdir())
    assert blobs == sorted(d.digest.filename for d in model.manifest.blobs())  # one copy each, no partials
    for desc in model.manifest.blobs():
        assert store.blob_path(desc.digest).read_bytes() == alice.store.blob_path(desc.digest).read_bytes()
