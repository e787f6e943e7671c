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
from formats.names import ModelName
from registry.storage import CHUNK_SIZE
from tests.client.conftest import make_model
from tests.frontends import ThreadedServer, recording_front_app


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
    # The good chunks are kept (idle workers split parts, so a chunk may span several).
    on_disk = [
        sum(p["completed"] for p in state["parts"] if offset <= p["offset"] < offset + size)
        for _, offset, size in state["chunks"]
    ]
    assert on_disk == [CHUNK_SIZE, 0, CHUNK_SIZE]

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


def test_prefix_hash_reads_back_the_file_in_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pull's running hash: completed prefixes of any length, windows that do not line up with
    them, and the same digest as hashing the bytes at once."""
    import hashlib
    import mmap

    from client import pull as pull_module

    monkeypatch.setattr(pull_module, "MAP_WINDOW", 3 * mmap.ALLOCATIONGRANULARITY)
    data = os.urandom(10 * mmap.ALLOCATIONGRANULARITY + 123)
    path = tmp_path / "partial"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pull_module._PrefixHash(fd) as hashed:
            for end in (1, 4097, 4097, 20_000, 3):  # repeated and shorter prefixes change nothing
                hashed.prefix_done(end)
            digest = asyncio.run(hashed.digest(len(data)))
        assert digest.hex == hashlib.sha256(data).hexdigest()
        assert pull_module._sha256(fd, 5000, 30_000) == hashlib.sha256(data[5000:30_000]).hexdigest()
    finally:
        os.close(fd)


def test_prefix_hash_of_a_truncated_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """Mapping past the end of a file kills the process (SIGBUS): a partial file someone truncated
    must fail the pull with a clear error instead."""
    from client import pull as pull_module

    path = tmp_path / "partial"
    path.write_bytes(b"x" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(errors.IntegrityError, match="shorter than 5000 bytes"):
            pull_module._sha256(fd, 0, 5000)
    finally:
        os.close(fd)


def test_a_manifest_whose_docker_content_digest_disagrees_is_refused(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A registry (or anything between) that says one digest and sends other bytes: the pull
    stops before fetching a blob, and nothing is stored under the name."""
    alice = load({"HANGAR_HOME": str(tmp_path / "alice")})
    a = Store(alice.models).ensure()
    name = make_model(a, f"{registry.host}/lying/model", os.urandom(50_000))
    asyncio.run(push(name, a, alice))
    wrong = "sha256:" + "0" * 64

    def lie(request, headers: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
        if "/manifests/" in request.url.path:
            headers["docker-content-digest"] = wrong

    received: list[tuple[str, str, int]] = []
    with ThreadedServer(recording_front_app(registry.url, received, rewrite=lie)) as front:
        via_front = ModelName.parse(f"127.0.0.1:{front.port}/lying/model")
        bob = load({"HANGAR_HOME": str(tmp_path / "bob")})
        b = Store(bob.models).ensure()
        with pytest.raises(errors.IntegrityError, match="manifest digest mismatch"):
            asyncio.run(pull(via_front, b, bob))
    assert not [p for m, p, _ in received if "/blobs/" in p]
    assert not b.manifest_path(via_front).exists() and b.models() == []
