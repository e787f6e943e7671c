"""When pulled blobs reach the disk (``[transfer] fsync``), and what happens after the machine
restarts before they did. A restart is simulated the way it shows on disk: the marker of a
deferred blob names another boot, and the blob may be damaged."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from client.config import load
from client.pull import DEFER_FLUSH_MIN, pull
from client.push import push
from client.store import SETTLE_AFTER, SettleReport, Store, current_boot_id
from client.store_ops import remove_models, settle_store
from formats import mediatypes as mt
from formats.digest import Digest
from formats.manifest import Descriptor, Manifest
from formats.names import ModelName
from runtime import app as runtime_app
from runtime.config import load as load_runtime
from tests.client.conftest import make_model
from tests.client.test_cli import hangar
from tests.client.test_integrity import flip
from tests.servers import RuntimeProcess, wait_until

pytestmark = pytest.mark.skipif(current_boot_id() is None, reason="needs Linux's boot id")


def home_with(tmp_path: Path, who: str, fsync: str | None = None) -> Path:
    home = tmp_path / who
    home.mkdir(parents=True, exist_ok=True)
    if fsync is not None:
        (home / "config.toml").write_text(f"[transfer]\nfsync = {fsync}\n")
    return home


def published(reference_registry, tmp_path: Path, name: str, sizes: tuple[int, ...]) -> ModelName:  # type: ignore[no-untyped-def]
    """A model with one weights layer of each size, pushed to the reference registry."""
    alice = load({"HANGAR_HOME": str(home_with(tmp_path, "alice"))})
    store = Store(alice.models).ensure()
    model = make_model(store, f"{reference_registry.host}/{name}", os.urandom(sizes[0]))
    manifest = store.get(model).manifest
    assert manifest.config is not None
    more = [Descriptor(mt.OLLAMA_ADAPTER, *store.add_blob_bytes(os.urandom(size))) for size in sizes[1:]]
    store.put_manifest(model, Manifest.build(manifest.config, [*manifest.layers, *more]).raw)
    asyncio.run(push(model, store, alice))
    return model


def pull_into(home: Path, name: ModelName) -> tuple[Store, int]:
    settings = load({"HANGAR_HOME": str(home)})
    store = Store(settings.models)
    result = asyncio.run(pull(name, store, settings))
    return store, result.bytes_fetched


def as_if_restarted(store: Store) -> None:
    for digest in store.unflushed():
        (store.unflushed_dir / digest.filename).write_text("a-boot-before-this-one\n")


def weights_of(store: Store, name: ModelName) -> list[Digest]:
    return [d.digest for d in store.get(name).manifest.layers if d.size >= DEFER_FLUSH_MIN]


@pytest.mark.parametrize(
    ("setting", "mode"),
    [(None, "deferred"), ('"deferred"', "deferred"), ("true", "before"), ('"before"', "before"),
     ("false", "off"), ('"OFF"', "off")],
)  # fmt: skip
def test_fsync_setting(tmp_path: Path, setting: str | None, mode: str) -> None:
    assert load({"HANGAR_HOME": str(home_with(tmp_path, "h", setting))}).fsync == mode


def test_fsync_setting_rejects_other_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r'config.toml: \[transfer\] fsync must be "deferred", true or false'):
        load({"HANGAR_HOME": str(home_with(tmp_path, "h", '"sometimes"'))})


def test_deferred_pull_marks_large_blobs_and_settle_flushes_them_later(reference_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    name = published(reference_registry, tmp_path, "durable/deferred", (2 * DEFER_FLUSH_MIN,))
    store, _ = pull_into(home_with(tmp_path, "bob"), name)
    weights = weights_of(store, name)
    # Only the weights are deferred; the small blobs were flushed before they were published.
    assert store.unflushed() == weights and len(list(store.get(name).manifest.blobs())) > len(weights)
    assert (store.unflushed_dir / weights[0].filename).read_text().strip() == current_boot_id()
    assert store.has_blob(weights[0])

    young = store.settle()  # just pulled: the kernel has not had its time to write it back yet
    assert young.flushed == [] and store.unflushed() == weights
    settled = store.settle(min_age=0)
    assert settled.flushed == weights and settled.removed == [] and store.unflushed() == []


def test_settle_forgets_markers_of_removed_blobs(reference_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    name = published(reference_registry, tmp_path, "durable/removed", (2 * DEFER_FLUSH_MIN,))
    store, _ = pull_into(home_with(tmp_path, "bob"), name)
    weights = weights_of(store, name)
    assert store.unflushed() == weights
    as_if_restarted(store)
    assert remove_models(store, [name]).blobs  # hangar rm, before anything settled
    report = store.settle()
    assert report == SettleReport() and store.unflushed() == []  # nothing left to check


def test_settle_skips_markers_it_may_not_touch(
    reference_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # A store shared with another user whose lock files we cannot open (tests run as root, so
    # the refusal is injected where the operating system would raise it).
    name = published(reference_registry, tmp_path, "durable/shared", (2 * DEFER_FLUSH_MIN,))
    store, _ = pull_into(home_with(tmp_path, "bob"), name)
    weights = weights_of(store, name)
    as_if_restarted(store)

    def refused(key: str) -> contextlib.AbstractContextManager[None]:
        raise PermissionError(13, "Permission denied", str(store.locks_dir / f"{key}.lock"))

    monkeypatch.setattr(store, "lock", refused)
    assert store.settle() == SettleReport(skipped=weights)
    assert store.unflushed() == weights and store.has_blob(weights[0])  # left for its owner


@pytest.mark.parametrize("setting", ["true", "false"])
def test_flushing_before_or_never_leaves_no_markers(reference_registry, tmp_path: Path, setting: str) -> None:  # type: ignore[no-untyped-def]
    name = published(reference_registry, tmp_path, f"durable/{setting}", (2 * DEFER_FLUSH_MIN,))
    store, _ = pull_into(home_with(tmp_path, "bob", setting), name)
    assert store.unflushed() == [] and all(store.has_blob(d) for d in weights_of(store, name))


def test_after_a_restart_damaged_blobs_are_removed_and_pulled_again(reference_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    name = published(reference_registry, tmp_path, "durable/restart", (2 * DEFER_FLUSH_MIN, 3 * DEFER_FLUSH_MIN))
    bob = home_with(tmp_path, "bob")
    store, _ = pull_into(bob, name)
    damaged, intact = weights_of(store, name)
    original = store.blob_path(damaged).read_bytes()
    as_if_restarted(store)
    flip(store.blob_path(damaged), 1000)  # what a power cut before writeback can leave

    said: list[str] = []
    report = settle_store(Store(store.root), said.append)
    assert report.removed == [damaged] and report.verified == [intact]
    assert not store.has_blob(damaged) and store.has_blob(intact) and store.unflushed() == []
    assert sorted(said[:2]) == sorted([
        f"checking {damaged.short} (2.1 MB): pulled just before this machine restarted",
        f"checking {intact.short} (3.1 MB): pulled just before this machine restarted",
    ])  # fmt: skip
    assert said[2:] == [
        f"removed {damaged.short}: the restart came before it reached the disk and it is damaged; "
        f"`hangar pull {name.display()}` fetches it again"
    ]

    _, fetched = pull_into(bob, name)
    assert fetched == 2 * DEFER_FLUSH_MIN  # the damaged blob alone
    assert store.blob_path(damaged).read_bytes() == original


def test_commands_check_the_store_after_a_restart(reference_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    name = published(reference_registry, tmp_path, "durable/cli", (2 * DEFER_FLUSH_MIN,))
    bob = home_with(tmp_path, "bob")
    store, _ = pull_into(bob, name)
    [weights] = weights_of(store, name)
    as_if_restarted(store)
    with open(store.blob_path(weights), "r+b") as f:
        f.truncate(DEFER_FLUSH_MIN)  # the tail never reached the disk

    listed = hangar(bob, "list")
    assert f"checking {weights.short}" in listed.stderr
    assert f"removed {weights.short}" in listed.stderr and f"hangar pull {name.display()}" in listed.stderr
    assert not store.has_blob(weights)
    assert "removed" not in hangar(bob, "list").stderr  # settled once
    hangar(bob, "pull", str(name))
    assert Digest.of_file(store.blob_path(weights)) == weights


def test_the_runtime_checks_the_store_before_serving(reference_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    name = published(reference_registry, tmp_path, "durable/runtime", (2 * DEFER_FLUSH_MIN,))
    bob = home_with(tmp_path, "bob")
    store, _ = pull_into(bob, name)
    [weights] = weights_of(store, name)
    as_if_restarted(store)
    flip(store.blob_path(weights), 5)

    runtime = RuntimeProcess(bob).start()
    try:
        assert not store.has_blob(weights) and store.unflushed() == []
        assert f"removed {weights.short}" in runtime.log_path.read_text()
        answer = httpx.post(f"{runtime.url}/api/generate", json={"model": str(name), "prompt": "hi"}, timeout=30)
        assert answer.status_code == 404
        assert answer.json()["error"] == (
            f'model "{name}" is incomplete ({weights.filename} missing), try pulling it again'
        )
    finally:
        runtime.stop()


def test_the_runtime_flushes_deferred_blobs_while_it_runs(
    reference_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    name = published(reference_registry, tmp_path, "durable/daemon", (2 * DEFER_FLUSH_MIN,))
    bob = home_with(tmp_path, "bob")
    store, _ = pull_into(bob, name)
    [weights] = weights_of(store, name)
    marker = store.unflushed_dir / weights.filename
    monkeypatch.setattr(runtime_app, "SETTLE_EVERY", 0.2)
    app = runtime_app.create_app(load_runtime({}), load({"HANGAR_HOME": str(bob)}))
    with TestClient(app):
        time.sleep(0.5)
        assert marker.exists()  # too young at start and since: the kernel may not have written it yet
        long_ago = time.time() - 2 * SETTLE_AFTER
        os.utime(marker, (long_ago, long_ago))
        wait_until(lambda: not marker.exists(), 10, "the runtime to flush the deferred blob")
    assert store.has_blob(weights)
