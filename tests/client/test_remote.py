"""``hangar outdated``, ``update`` and ``tags`` against real registries: ours and the reference."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from client import errors
from client.config import load
from client.pull import pull
from client.push import push
from client.remote import NOT_IN_REGISTRY, check_updates, list_tags
from client.store import Store
from client.store_ops import copy_model
from formats.digest import Digest
from formats.names import ModelName
from tests.client.conftest import make_model
from tests.client.test_cli import hangar
from tests.frontends import ThreadedServer, digestless_front_app
from tests.servers import free_port


def store_of(home: Path) -> Store:
    return Store(load({"HANGAR_HOME": str(home)}).models).ensure()


def status_lines(out: str) -> dict[str, str]:
    """``hangar outdated``'s table as {name: status}."""
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    return {name: status for name, _, status in rows}


def test_outdated_then_update_pulls_the_new_version_and_drops_the_old_blobs(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    moving = f"{registry.host}/upd/model:v1"
    steady = f"{registry.host}/upd/steady:latest"
    old_weights, new_weights = os.urandom(300_000), os.urandom(300_000)
    make_model(store_of(alice), moving, old_weights)
    make_model(store_of(alice), steady, os.urandom(300_000))
    hangar(alice, "push", moving)
    hangar(alice, "push", steady)
    hangar(bob, "pull", moving)
    hangar(bob, "pull", steady)
    local_only = make_model(store_of(bob), f"{registry.host}/upd/never-pushed")

    r = hangar(bob, "outdated")
    assert status_lines(r.stdout) == {
        moving: "up to date",
        steady: "up to date",
        local_only.display(): "not in the registry",
    }

    make_model(store_of(alice), moving, new_weights)  # a new version under the same tag
    hangar(alice, "push", moving)
    bob_store = store_of(bob)
    old = bob_store.get(ModelName.parse(moving))
    new_id = store_of(alice).get(ModelName.parse(moving)).id
    assert status_lines(hangar(bob, "outdated").stdout)[moving] == "update available"
    assert status_lines(hangar(bob, "outdated", steady).stdout) == {steady: "up to date"}

    dry = hangar(bob, "update", "--dry-run")
    assert f"would update {moving} ({old.id[:12]} → {new_id[:12]})" in dry.stdout
    assert bob_store.get(ModelName.parse(moving)).id == old.id

    r = hangar(bob, "update")
    assert f"updating {moving}" in r.stdout and steady not in r.stdout
    assert "removing unused layers" in r.stdout
    updated = bob_store.get(ModelName.parse(moving))
    assert updated.id == new_id
    weights = {d.digest for d in updated.manifest.layers if d.media_type.endswith(".model")}
    assert all(bob_store.blob_path(d).read_bytes() == new_weights for d in weights)
    old_layers = {d.digest for d in old.manifest.blobs()} - {d.digest for d in updated.manifest.blobs()}
    assert len(old_layers) == 1 and not any(bob_store.has_blob(d) for d in old_layers)
    assert set(status_lines(hangar(bob, "outdated").stdout).values()) == {"up to date", "not in the registry"}
    assert hangar(bob, "update").stdout.strip() == "every model is up to date"


def test_without_docker_content_digest_the_manifest_is_fetched_and_hashed(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = store_of(tmp_path)
    pushed = make_model(store, f"{registry.host}/upd/plain")
    hangar(tmp_path, "push", str(pushed))
    requests: list[str] = []
    with ThreadedServer(digestless_front_app(registry.url, requests)) as front:
        # The same manifest, known locally under the front's name.
        behind = ModelName.parse(f"127.0.0.1:{front.port}/upd/plain")
        store.put_manifest(behind, store.get(pushed).manifest.raw)
        assert status_lines(hangar(tmp_path, "outdated", str(behind)).stdout) == {behind.display(): "up to date"}
        assert requests == ["HEAD", "GET"]
        store.put_manifest(behind, store.get(make_model(store, f"{registry.host}/upd/other")).manifest.raw)
        assert status_lines(hangar(tmp_path, "outdated", str(behind)).stdout) == {behind.display(): "update available"}


def test_a_registry_that_cannot_be_asked_fails_only_its_models(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reachable = f"{registry.host}/upd/reachable"
    make_model(store_of(tmp_path), reachable)
    hangar(tmp_path, "push", reachable)
    gone = make_model(store_of(tmp_path), f"127.0.0.1:{free_port()}/upd/gone")

    r = hangar(tmp_path, "outdated", check=False)
    assert r.returncode == 1
    statuses = status_lines(r.stdout)
    assert statuses[f"{reachable}:latest"] == "up to date"
    assert statuses[gone.display()].startswith("error: check ") and "cannot reach" in statuses[gone.display()]

    r = hangar(tmp_path, "update", check=False)
    assert r.returncode == 1 and "cannot check" in r.stderr and "nothing to update" in r.stdout


def check_tags_pages(host: str, home: Path) -> None:
    repo = f"{host}/tagged/model"
    for tag in ("v1", "v2", "latest"):
        make_model(store_of(home), f"{repo}:{tag}")
        hangar(home, "push", f"{repo}:{tag}")

    assert sorted(hangar(home, "tags", repo).stdout.split()) == ["latest", "v1", "v2"]
    # One tag per page: the Link header is followed to the end (the reference registry, 2.8,
    # ignores n and sends them all at once).
    paged = asyncio.run(list_tags(ModelName.parse(repo), load({"HANGAR_HOME": str(home)}), page_size=1))
    assert sorted(paged) == ["latest", "v1", "v2"]


def test_tags_lists_every_page(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    check_tags_pages(registry.host, tmp_path)


def test_tags_from_the_reference_registry(reference_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    check_tags_pages(reference_registry.host, tmp_path)


def test_tags_of_a_repository_the_registry_does_not_have(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = hangar(tmp_path, "tags", f"{registry.host}/nobody/nothing", check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("Error: list tags of nobody/nothing:") and "NAME_UNKNOWN" in r.stderr
    with pytest.raises(errors.NotFound):
        asyncio.run(list_tags(ModelName.parse(f"{registry.host}/nobody/nothing"), load({"HANGAR_HOME": str(tmp_path)})))


def test_a_pull_that_moves_a_tag_removes_the_blobs_only_the_old_version_used(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice, bob = store_of(tmp_path / "alice"), store_of(tmp_path / "bob")
    settings_a, settings_b = (load({"HANGAR_HOME": str(tmp_path / who)}) for who in ("alice", "bob"))
    name = ModelName.parse(f"{registry.host}/moving/model:v1")
    keep = ModelName.parse(f"{registry.host}/moving/keep:v1")

    def publish() -> Digest:
        make_model(alice, str(name), os.urandom(250_000))
        asyncio.run(push(name, alice, settings_a))
        return alice.get(name).manifest.layers[0].digest

    def bob_pulls() -> list[str]:
        statuses: list[str] = []
        asyncio.run(pull(name, bob, settings_b, progress=lambda p: statuses.append(p.status)))
        return statuses

    first = publish()
    assert "removing unused layers" not in bob_pulls()
    assert "removing unused layers" not in bob_pulls()  # the same version again: nothing moved
    copy_model(bob, name, keep)  # a second model using the first version's weights

    second = publish()
    statuses = bob_pulls()
    assert statuses[-3:] == ["writing manifest", "removing unused layers", "success"]
    assert bob.has_blob(first) and bob.has_blob(second)  # `keep` still uses the first weights

    third = publish()
    bob_pulls()
    assert not bob.has_blob(second) and bob.has_blob(third) and bob.has_blob(first)
    assert bob.referenced_digests() >= {first, third}


def test_private_models_are_checked_with_the_owners_key(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    alice.account.set_default_visibility(alice.name, "private")
    name = alice.model(f"{alice.name}/secret")
    alice.push(name)
    assert [c.status for c in asyncio.run(check_updates([alice.store.get(name)], alice.settings))] == ["up to date"]
    # Bob holds the same manifest under the same name, but the registry does not reveal a private
    # repository to others: for him it is not there, and `hangar update` leaves his copy alone.
    bob.store.put_manifest(name, alice.store.get(name).manifest.raw)
    (seen,) = asyncio.run(check_updates([bob.store.get(name)], bob.settings))
    assert seen.status == NOT_IN_REGISTRY and not seen.outdated
