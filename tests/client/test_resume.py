"""Interrupted transfers resume: after kill -9 of the client mid-pull and mid-push, and after a
registry restart mid-pull, fetching or sending no more than what was missing plus one part."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from client.config import load
from client.pull import PullOptions, PullResult, pull
from client.store import Store
from registry.storage import CHUNK_SIZE
from tests.client.conftest import make_model
from tests.servers import REPO_ROOT, wait_until

SIZE = 3 * CHUNK_SIZE  # three 16 MiB chunks
RATE = "6MB"  # slow enough to interrupt, fast enough for a test


def hangar_background(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HANGAR_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def state_completed(store: Store, digest_hex: str) -> int:
    path = store.blobs_dir / f"sha256-{digest_hex}-partial.json"
    try:
        return sum(p["completed"] for p in json.loads(path.read_text())["parts"])
    except (FileNotFoundError, ValueError):
        return 0


def test_pull_resumes_after_kill_9(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    name = alice.model(f"{alice.name}/big", size=SIZE)
    alice.push(name)
    weights = alice.store.get(name).manifest.layers[0]

    proc = hangar_background(bob.settings.home, "pull", str(name), "--max-rate", RATE)
    wait_until(lambda: state_completed(bob.store, weights.digest.hex) >= CHUNK_SIZE, 60, "a chunk on disk")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    saved = state_completed(bob.store, weights.digest.hex)
    assert 0 < saved < SIZE
    assert not bob.store.has_blob(weights.digest)  # nothing half-done is visible

    result = bob.pull(name)
    small = sum(d.size for d in alice.store.get(name).manifest.blobs()) - SIZE
    # The state is saved every second (at 6 MB/s), so what it lacks is under one 16 MiB part.
    assert result.bytes_fetched == (SIZE - saved) + small
    assert bob.store.blob_path(weights.digest).read_bytes() == alice.store.blob_path(weights.digest).read_bytes()
    assert not list(bob.store.blobs_dir.glob("*-partial*"))


def test_push_resumes_after_kill_9(people) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    name = alice.model(f"{alice.name}/upload", size=SIZE)
    weights = alice.store.get(name).manifest.layers[0]
    part = 8 * 1024 * 1024
    proc = hangar_background(alice.settings.home, "push", str(name), "--max-rate", RATE, "--part-size", str(part))
    state_dir = alice.store.push_dir

    def session() -> str | None:
        files = list(state_dir.rglob(f"{weights.digest.hex}.json"))
        return json.loads(files[0].read_text())["location"] if files else None

    def offset() -> int:
        location = session()
        if location is None:
            return 0
        with alice.http(f"repository:{name.repository}:pull,push") as c:
            r = c.get(location)
        return int(r.headers.get("Upload-Offset", 0)) if r.status_code == 204 else 0

    wait_until(lambda: offset() >= 2 * part, 60, "two chunks on the registry")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    held = offset()
    assert 2 * part <= held < SIZE

    result = alice.push(name)
    small = sum(d.size for d in alice.store.get(name).manifest.blobs()) - SIZE
    assert result.bytes_sent == (SIZE - held) + small  # only what the registry lacked
    with alice.http(f"repository:{name.repository}:pull") as c:
        assert (
            c.get(f"/v2/{name.repository}/blobs/{weights.digest}").content
            == alice.store.blob_path(weights.digest).read_bytes()
        )
    assert not list(state_dir.rglob("*.json"))


def test_pull_survives_a_registry_restart(make_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    alice = load({"HANGAR_HOME": str(tmp_path / "alice")})
    a = Store(alice.models).ensure()
    name = make_model(a, f"{registry.host}/ns/model", os.urandom(SIZE))
    from client.push import push

    asyncio.run(push(name, a, alice))
    bob = load({"HANGAR_HOME": str(tmp_path / "bob")})
    b = Store(bob.models)
    outcome: list[PullResult | BaseException] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(pull(name, b, bob, PullOptions(max_rate=6_000_000))))
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    weights = a.get(name).manifest.layers[0]
    wait_until(lambda: state_completed(b, weights.digest.hex) >= CHUNK_SIZE // 2, 60, "the pull to be under way")
    registry.stop()
    registry.start()  # same port, same data
    thread.join(120)
    assert outcome and isinstance(outcome[0], PullResult), outcome
    total = sum(d.size for d in a.get(name).manifest.blobs())
    assert total <= outcome[0].bytes_fetched <= total + CHUNK_SIZE
    assert b.blob_path(weights.digest).read_bytes() == a.blob_path(weights.digest).read_bytes()
    assert httpx.get(f"{registry.url}/v2/").status_code == 200


def test_pull_resumes_from_the_previous_releases_state(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A partial download left by the release before (state version 2: one part per chunk, the
    chunk's digest on the part) resumes: only the chunks it lacks are fetched."""
    import hashlib

    from client.push import push

    alice = load({"HANGAR_HOME": str(tmp_path / "alice")})
    a = Store(alice.models).ensure()
    name = make_model(a, f"{registry.host}/ns/upgraded", os.urandom(3 * CHUNK_SIZE))
    asyncio.run(push(name, a, alice))
    weights = a.get(name).manifest.layers[0]
    data = a.blob_path(weights.digest).read_bytes()

    bob = load({"HANGAR_HOME": str(tmp_path / "bob")})
    b = Store(bob.models).ensure()
    partial = b.partial_path(weights.digest)
    partial.write_bytes(data[:CHUNK_SIZE] + bytes(2 * CHUNK_SIZE))
    spans = [(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE) for i in range(3)]
    parts = [
        {
            "offset": lo,
            "size": hi - lo,
            "completed": hi - lo if lo == 0 else 0,
            "chunk": hashlib.sha256(data[lo:hi]).hexdigest(),
        }
        for lo, hi in spans
    ]
    doc = {"version": 2, "digest": str(weights.digest), "size": len(data), "parts": parts}
    partial.with_name(partial.name + ".json").write_text(json.dumps(doc))

    result = asyncio.run(pull(name, b, bob))
    small = sum(d.size for d in a.get(name).manifest.blobs()) - weights.size
    assert result.bytes_fetched == 2 * CHUNK_SIZE + small
    assert b.blob_path(weights.digest).read_bytes() == data
