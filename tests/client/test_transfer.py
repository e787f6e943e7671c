"""Pull and push between stores through a real registry process."""

import asyncio
import os
from pathlib import Path

import pytest

from client import errors
from client.config import ClientSettings, load
from client.progress import Progress
from client.pull import pull
from client.push import push
from client.store import Store
from registry.oci.names import ModelName
from tests.client.conftest import make_model


def other_store(tmp_path: Path, who: str) -> tuple[ClientSettings, Store]:
    settings = load({"HANGAR_HOME": str(tmp_path / who)})
    return settings, Store(settings.models).ensure()


def test_push_then_pull_round_trip(registry, repo: str, store: Store, settings: ClientSettings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    name = make_model(store, f"{registry.host}/{repo}:v1", os.urandom(3_000_000))
    events: list[Progress] = []
    asyncio.run(push(name, store, settings, progress=events.append))
    assert [e.status for e in events if e.digest is None] == ["retrieving manifest", "pushing manifest", "success"]

    bob_settings, bob = other_store(tmp_path, "bob")
    pulled: list[Progress] = []
    from client.pull import PullOptions

    model = asyncio.run(pull(name, bob, bob_settings, PullOptions(part_size=1_000_000), progress=pulled.append)).model
    assert model.manifest.raw == store.get(name).manifest.raw
    for desc in model.manifest.blobs():
        assert bob.blob_path(desc.digest).read_bytes() == store.blob_path(desc.digest).read_bytes()
    statuses = [e.status for e in pulled if e.digest is None]
    assert statuses == ["pulling manifest", "verifying sha256 digest", "writing manifest", "success"]
    assert not list(bob.blobs_dir.glob("*-partial*"))

    # A second push sends no blob bytes: the registry has them all.
    again: list[Progress] = []
    asyncio.run(push(name, store, settings, progress=again.append))
    assert all(e.completed == e.total for e in again if e.digest)


def test_pull_unknown_model(registry, repo: str, settings: ClientSettings, store: Store) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.NotFound, match="pull model manifest"):
        asyncio.run(pull(ModelName.parse(f"{registry.host}/{repo}:nope"), store, settings))


def test_unreachable_registry(settings: ClientSettings, store: Store) -> None:
    from tests.servers import free_port

    name = ModelName.parse(f"127.0.0.1:{free_port()}/ns/model")
    with pytest.raises(errors.RegistryUnreachable, match="cannot reach"):
        asyncio.run(pull(name, store, settings))
