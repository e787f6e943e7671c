"""Push and pull round trips: byte-identical blobs and manifests, against our registry with
authentication and against the reference registry."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from client.config import load
from client.pull import PullOptions, pull
from client.push import PushOptions, push
from client.store import Store
from tests.client.conftest import make_model


def assert_same_model(a: Store, b: Store, name) -> None:  # type: ignore[no-untyped-def]
    ma, mb = a.get(name), b.get(name)
    assert ma.manifest.raw == mb.manifest.raw and ma.id == mb.id
    for desc in ma.manifest.blobs():
        assert a.blob_path(desc.digest).read_bytes() == b.blob_path(desc.digest).read_bytes()


def test_round_trip_with_authentication(people) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    bob = people("bob")
    name = alice.model(f"{alice.name}/model", size=40 * 1024 * 1024 + 17)  # several chunks
    pushed = alice.push(name)
    assert pushed.bytes_sent >= 40 * 1024 * 1024 and pushed.skipped == 0
    pulled = bob.pull(name)
    assert pulled.bytes_fetched == sum(d.size for d in alice.store.get(name).manifest.blobs())
    assert_same_model(alice.store, bob.store, name)
    # Pulling again fetches nothing; pushing again sends nothing.
    assert bob.pull(name).bytes_fetched == 0
    assert alice.push(name).bytes_sent == 0


def test_round_trip_with_the_reference_registry(reference_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = load({"HANGAR_HOME": str(tmp_path / "alice")})
    bob = load({"HANGAR_HOME": str(tmp_path / "bob")})
    a, b = Store(alice.models).ensure(), Store(bob.models).ensure()
    name = make_model(a, f"{reference_registry.host}/team/model:v1", os.urandom(5_000_000))
    asyncio.run(push(name, a, alice, PushOptions(part_size=1_000_000)))
    result = asyncio.run(pull(name, b, bob, PullOptions(part_size=1_000_000)))
    assert result.bytes_fetched == sum(d.size for d in a.get(name).manifest.blobs())
    assert_same_model(a, b, name)


def test_pulled_model_has_ollamas_layout(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    name = alice.model(f"{alice.name}/layout")
    alice.push(name)
    bob.pull(name)
    root = bob.store.root
    host, ns, model, tag = name.parts()
    manifest = root / "manifests" / host / ns / model / tag
    assert manifest.is_file()
    for desc in bob.store.get(name).manifest.blobs():
        assert (root / "blobs" / f"sha256-{desc.digest.hex}").is_file()
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".hangar" not in p.parts)
    assert files == sorted([manifest.relative_to(root).as_posix()] + [
        f"blobs/sha256-{d.digest.hex}" for d in bob.store.get(name).manifest.blobs()
    ])  # fmt: skip
