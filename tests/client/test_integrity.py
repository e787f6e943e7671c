"""A damaged byte on the registry is caught; with chunk digests only the damaged chunk is
fetched again, without them the blob is discarded. Nothing corrupt ever becomes visible."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from client import errors
from client.config import load
from client.pull import pull
from client.push import push
from client.store import Store
from registry.storage import CHUNK_SIZE
from tests.client.conftest import make_model


def flip(path: Path, offset: int) -> int:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([old ^ 0xFF]))
    return old


def restore(path: Path, offset: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([value]))


def test_damaged_chunk_is_refetched_alone(make_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    alice, bob = (load({"HANGAR_HOME": str(tmp_path / who)}) for who in ("alice", "bob"))
    a, b = Store(alice.models).ensure(), Store(bob.models)
    name = make_model(a, f"{registry.host}/ns/model", os.urandom(3 * CHUNK_SIZE))
    asyncio.run(push(name, a, alice))
    weights = a.get(name).manifest.layers[0]
    stored = registry.data_dir / "blobs" / "sha256" / weights.digest.hex[:2] / weights.digest.hex
    where = CHUNK_SIZE + 12345  # in the second chunk
    original = flip(stored, where)

    with pytest.raises(errors.TransferFailed, match=f"bytes {CHUNK_SIZE}-{2 * CHUNK_SIZE - 1} keep arriving damaged"):
        asyncio.run(pull(name, b, bob))
    assert not b.has_blob(weights.digest)  # nothing damaged is visible
    state = json.loads((b.blobs_dir / f"sha256-{weights.digest.hex}-partial.json").read_text())
    assert [p["completed"] for p in state["parts"]] == [CHUNK_SIZE, 0, CHUNK_SIZE]  # the good chunks are kept

    restore(stored, where, original)  # the registry's copy is repaired
    result = asyncio.run(pull(name, b, bob))
    small = sum(d.size for d in a.get(name).manifest.blobs()) - weights.size
    assert result.bytes_fetched == CHUNK_SIZE + small  # one chunk, not the blob
    assert b.blob_path(weights.digest).read_bytes() == a.blob_path(weights.digest).read_bytes()


def test_without_chunk_digests_the_blob_is_discarded(reference_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice, bob = (load({"HANGAR_HOME": str(tmp_path / who)}) for who in ("alice", "bob"))
    a, b = Store(alice.models).ensure(), Store(bob.models)
    name = make_model(a, f"{reference_registry.host}/ns/damaged", os.urandom(2_000_000))
    asyncio.run(push(name, a, alice))
    weights = a.get(name).manifest.layers[0]
    stored = (
        reference_registry.root
        / "data/docker/registry/v2/blobs/sha256"
        / weights.digest.hex[:2]
        / weights.digest.hex
        / "data"
    )
    flip(stored, 1000)
    with pytest.raises(errors.IntegrityError, match="digest mismatch"):
        asyncio.run(pull(name, b, bob))
    assert not b.has_blob(weights.digest)
    assert not list(b.blobs_dir.glob(f"sha256-{weights.digest.hex}*"))
    with pytest.raises(errors.ModelNotFound):
        b.get(name)
