from pathlib import Path

import pytest

from client.errors import InvalidName, ModelNotFound
from client.store import Store
from client.store_ops import copy_model, remove_models
from formats.digest import Digest
from formats.names import ModelName
from tests.client.conftest import make_model


def test_ollama_layout(store: Store) -> None:
    name = make_model(store, "alice/model:v1")
    model = store.get(name)
    assert model.path == store.root / "manifests" / "registry.ollama.ai" / "alice" / "model" / "v1"
    for desc in model.manifest.blobs():
        assert (store.root / "blobs" / f"sha256-{desc.digest.hex}").is_file()
    assert model.id == Digest.of_bytes(model.path.read_bytes()).hex


def test_case_insensitive_resolution(store: Store) -> None:
    make_model(store, "Alice/Model:latest")
    resolved = store.parse_name("alice/MODEL", "registry.ollama.ai")
    assert resolved.parts() == ("registry.ollama.ai", "Alice", "Model", "latest")
    assert store.get(resolved).name.display() == "Alice/Model:latest"
    new = store.parse_name("alice/other", "registry.ollama.ai")
    assert new.parts() == ("registry.ollama.ai", "Alice", "other", "latest")


def test_invalid_and_missing_names(store: Store) -> None:
    with pytest.raises(InvalidName):
        store.parse_name("a/b/c/d", "registry.ollama.ai")
    with pytest.raises(ModelNotFound):
        store.get(ModelName.parse("nobody/nothing"))


def test_models_lists_only_four_level_manifests(store: Store) -> None:
    make_model(store, "m1")
    make_model(store, "localhost:5000/ns/m2:x")
    (store.manifests_dir / "stray.txt").write_text("not a model")
    assert sorted(m.name.display() for m in store.models()) == ["localhost:5000/ns/m2:x", "m1:latest"]


def test_rm_keeps_blobs_other_models_use(store: Store) -> None:
    shared = b"shared weights" * 1000
    a = make_model(store, "a", shared)
    b = make_model(store, "b", shared)
    c = make_model(store, "c")
    removal = remove_models(store, [a, c])
    assert [n.display() for n in removal.models] == ["a:latest", "c:latest"]
    kept = {p.name for p in store.blobs_dir.iterdir()}
    needed = {d.digest.filename for d in store.get(b).manifest.blobs()}
    assert kept == needed
    assert removal.freed > 200_000


def test_cp_shares_blobs(store: Store) -> None:
    a = make_model(store, "a")
    before = sorted(store.blobs_dir.iterdir())
    b = copy_model(store, a, ModelName.parse("x/b:v2"))
    assert b.manifest.raw == store.get(a).manifest.raw
    assert sorted(store.blobs_dir.iterdir()) == before


def test_add_blob_file_is_content_addressed(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"x" * 5_000_000)
    digest, size = store.add_blob_file(source)
    assert size == 5_000_000 and store.blob_path(digest).read_bytes() == source.read_bytes()
    assert list(store.tmp_dir.iterdir()) == []


def test_prune_keeps_exactly_the_referenced_blobs(store: Store) -> None:
    import os
    import time

    from client.store_ops import plan_prune, prune

    keep = make_model(store, "keep")
    gone = make_model(store, "gone")
    remove_models(store, [gone])  # rm already deleted gone's own blobs; add stray ones:
    stray, _ = store.add_blob_bytes(b"nobody uses me")
    (store.blobs_dir / f"{stray.filename}-partial").write_bytes(b"half")
    (store.blobs_dir / f"{stray.filename}-partial.json").write_text("{}")
    (store.tmp_dir / "tmp123").write_bytes(b"temp")

    assert plan_prune(store, 3600).size == 0  # everything is fresh: the grace period protects it
    old = time.time() - 7200
    for path in [*store.blobs_dir.iterdir(), *store.tmp_dir.iterdir()]:
        os.utime(path, (old, old))
    plan = plan_prune(store, 3600)
    assert [p.name for p, _ in plan.blobs] == [stray.filename]
    assert sorted(p.name for p, _ in plan.partials) == sorted(
        [f"{stray.filename}-partial", f"{stray.filename}-partial.json", "tmp123"]
    )
    done = prune(store, plan)
    assert done.size == plan.size == len(b"nobody uses me") + 4 + 2 + 4
    remaining = {p.name for p in store.blobs_dir.iterdir()}
    assert remaining == {d.digest.filename for d in store.get(keep).manifest.blobs()}
    assert list(store.tmp_dir.iterdir()) == []


def test_prune_rechecks_references(store: Store) -> None:
    """A blob that a new manifest references between plan and execution is kept."""
    from client.store_ops import plan_prune, prune

    name = make_model(store, "m")
    model = store.get(name)
    store.delete_manifest(name)
    plan = plan_prune(store, 0)
    assert {p.name for p, _ in plan.blobs} == {d.digest.filename for d in model.manifest.blobs()}
    store.put_manifest(name, model.manifest.raw)  # re-created meanwhile
    assert prune(store, plan).blobs == []
    assert all(store.has_blob(d.digest) for d in model.manifest.blobs())
