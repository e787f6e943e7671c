"""Pull and push between stores through a real registry process."""

import asyncio
import os
import uuid
from pathlib import Path

import httpx
import pytest

from client import errors
from client.config import ClientSettings, load
from client.progress import Progress
from client.pull import pull
from client.push import push
from client.store import Store
from formats.names import ModelName
from tests.client.conftest import make_model
from tests.frontends import ThreadedServer, blob_bytes_received, recording_front_app


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


def test_a_second_push_sends_no_blob_bytes(registry, repo: str, store: Store, settings: ClientSettings) -> None:  # type: ignore[no-untyped-def]
    """The registry has every blob after the first push: the second sends none of their bytes,
    counted where the registry receives them (a recording proxy), not from progress events,
    which say "complete" for bytes sent again too."""
    received: list[tuple[str, str, int]] = []
    with ThreadedServer(recording_front_app(registry.url, received)) as front:
        name = make_model(store, f"127.0.0.1:{front.port}/{repo}:v1", os.urandom(3_000_000))
        asyncio.run(push(name, store, settings))
        assert blob_bytes_received(received) >= 3_000_000  # the proxy does see uploads
        received.clear()
        again: list[Progress] = []
        asyncio.run(push(name, store, settings, progress=again.append))
    assert all(e.completed == e.total for e in again if e.digest)
    assert blob_bytes_received(received) == 0
    assert not [(m, p) for m, p, _ in received if "/blobs/uploads" in p], received
    assert [m for m, p, _ in received if "/manifests/" in p] == ["PUT"]


def test_push_mounts_layers_inherited_from_another_repository(registry, store: Store, settings: ClientSettings) -> None:  # type: ignore[no-untyped-def]
    """A model made FROM another (its layer names the parent in ``from``) pushed to a new
    repository: the registry links the parent's blob (a cross-repository mount) instead of
    receiving it again."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    weights = os.urandom(2_000_000)
    received: list[tuple[str, str, int]] = []
    with ThreadedServer(recording_front_app(registry.url, received)) as front:
        host = f"127.0.0.1:{front.port}"
        parent = make_model(store, f"{host}/{namespace}/base:latest", weights)
        asyncio.run(push(parent, store, settings))
        received.clear()
        child = make_model(store, f"{host}/{namespace}/child:v1", weights, parent=f"{host}/{namespace}/base:latest")
        asyncio.run(push(child, store, settings))
    digest = store.get(child).manifest.layers[0].digest
    mounts = [p for m, p, _ in received if m == "POST" and "mount=" in p]
    assert len(mounts) == 1 and f"from={namespace}%2Fbase" in mounts[0] and str(digest).replace(":", "%3A") in mounts[0]
    assert blob_bytes_received(received) < 10_000, received  # the config and template only
    head = httpx.head(f"{registry.url}/v2/{namespace}/child/blobs/{digest}")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(weights)


def test_pull_unknown_model(registry, repo: str, settings: ClientSettings, store: Store) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.NotFound, match="pull model manifest"):
        asyncio.run(pull(ModelName.parse(f"{registry.host}/{repo}:nope"), store, settings))


def test_unreachable_registry(settings: ClientSettings, store: Store) -> None:
    from tests.servers import free_port

    name = ModelName.parse(f"127.0.0.1:{free_port()}/ns/model")
    with pytest.raises(errors.RegistryUnreachable, match="cannot reach"):
        asyncio.run(pull(name, store, settings))
