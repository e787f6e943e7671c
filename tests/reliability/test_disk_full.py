"""Disk full, on a real small filesystem: the registry's data directory (blobs, uploads, and the
SQLite database when it is the embedded one) and the client's model store. A write that finds no
space gets a clear error (507 from the registry; a message naming the folder and the space needed
from the client), leaves nothing partial visible, reads go on, and the same operation succeeds
once space is freed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.config import load
from client.store import Store
from formats import mediatypes as mt
from tests.client.conftest import make_model
from tests.client.test_cli import hangar
from tests.helpers import digest_of, ollama_manifest, push_blob, push_model, random_bytes
from tests.registry.test_fsck import fsck
from tests.reliability.disks import fill, small_filesystem
from tests.servers import REPO_ROOT, RegistryProcess, wait_until

INSUFFICIENT_STORAGE = 507


def fresh(registry: RegistryProcess) -> httpx.Client:
    """A new connection: the registry closes one whose request body it did not read to the end."""
    return httpx.Client(base_url=registry.url, timeout=60)


@pytest.fixture(params=["sqlite", "postgres"])
def full_registry(request: pytest.FixtureRequest, tmp_path: Path, database_factory) -> Iterator[RegistryProcess]:  # type: ignore[no-untyped-def]
    """A registry whose data directory is a 48 MiB filesystem of its own."""
    with small_filesystem(tmp_path / "disk", "48m") as disk:
        registry = RegistryProcess(disk / "data", database_factory(request.param), "--auth", "off")
        registry.backend = request.param  # type: ignore[attr-defined]
        registry.log_path = tmp_path / "registry.log"  # not on the disk that fills up
        registry.start()
        try:
            yield registry
        finally:
            registry.stop()


def test_a_push_into_a_full_registry_answers_507_and_succeeds_once_space_is_freed(full_registry) -> None:  # type: ignore[no-untyped-def]
    registry: RegistryProcess = full_registry
    disk = registry.data_dir.parent
    with fresh(registry) as http:
        kept_raw, kept_layers = push_model(http, "team/kept")
    filler = fill(disk, leave=2 << 20)
    big = random_bytes(8_000_000)
    digest = digest_of(big)

    # A monolithic upload: 507, with a message an operator can act on, and nothing kept.
    with fresh(registry) as http:
        refused = http.post("/v2/team/new/blobs/uploads/", params={"digest": digest}, content=big)
    assert refused.status_code == INSUFFICIENT_STORAGE, refused.text
    message = refused.json()["errors"][0]["message"]
    assert "out of storage space" in message and "No space left on device" in message
    assert "retry once space is freed" in message and refused.headers["retry-after"] == "60"
    with fresh(registry) as http:
        assert http.head(f"/v2/team/new/blobs/{digest}").status_code == 404
    assert list((registry.data_dir / "uploads").iterdir()) == []

    # A chunk with a declared length is all or nothing: refused, the session still at 0 bytes.
    with fresh(registry) as http:
        started = http.post("/v2/team/new/blobs/uploads/")
        assert started.status_code == 202
        location = started.headers["location"]
    with fresh(registry) as http:
        chunk = http.patch(location, content=big, headers={"Content-Type": "application/octet-stream"})
    assert chunk.status_code == INSUFFICIENT_STORAGE, chunk.text
    with fresh(registry) as http:
        status = http.get(location)
    assert status.status_code == 204 and status.headers["range"] in ("0-0", "0--1")
    upload_id = location.split("?")[0].rstrip("/").rsplit("/", 1)[1]
    assert (registry.data_dir / "uploads" / upload_id).stat().st_size == 0

    # Reads go on: manifests, blobs, tags, the catalogue.
    with fresh(registry) as http:
        assert http.get("/v2/team/kept/manifests/latest").content == kept_raw
        weights = kept_layers[1]["digest"]
        assert digest_of(http.get(f"/v2/team/kept/blobs/{weights}").content) == weights
        assert http.get("/v2/team/kept/tags/list").json()["tags"] == ["latest"]
        assert "team/kept" in http.get("/v2/_catalog").json()["repositories"]

    if registry.backend == "sqlite":  # type: ignore[attr-defined]
        # The database shares the full disk: a write to it is a 507 too, and changes nothing.
        fill_rest = fill(disk, name="rest")
        with fresh(registry) as http:
            manifest = ollama_manifest(kept_layers[0], kept_layers[1:])
            put = http.put("/v2/team/kept/manifests/v2", content=manifest,
                           headers={"Content-Type": mt.DOCKER_MANIFEST})  # fmt: skip
            assert put.status_code == INSUFFICIENT_STORAGE, put.text
            assert "database" in put.json()["errors"][0]["message"]
        with fresh(registry) as http:
            assert http.get("/v2/team/kept/manifests/latest").content == kept_raw
        fill_rest.unlink()

    # Space freed: the same session takes the chunk, and the push completes.
    filler.unlink()
    with fresh(registry) as http:
        chunk = http.patch(location, content=big, headers={"Content-Type": "application/octet-stream"})
        assert chunk.status_code == 202, chunk.text
        done = http.put(chunk.headers["location"], params={"digest": digest})
        assert done.status_code == 201, done.text
        config = push_blob(http, "team/new", b'{"model_format":"gguf"}')
        manifest = ollama_manifest(config, [{"mediaType": mt.OLLAMA_MODEL, "digest": digest, "size": len(big)}])
        put = http.put("/v2/team/new/manifests/latest", content=manifest, headers={"Content-Type": mt.DOCKER_MANIFEST})
        assert put.status_code == 201, put.text
        assert http.get(f"/v2/team/new/blobs/{digest}").content == big
    checked = fsck(registry, "--full")
    assert checked.returncode == 0 and "0 problem(s)" in checked.stdout, checked.stdout


def test_a_pull_into_a_full_store_names_the_folder_and_the_space_and_succeeds_once_freed(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    name = make_model(Store(load({"HANGAR_HOME": str(source)}).models).ensure(),
                      f"{registry.host}/team/big:v1", os.urandom(40_000_000))  # fmt: skip
    hangar(source, "push", str(name))

    with small_filesystem(tmp_path / "disk", "160m") as disk:
        home = disk / "home"
        store = Store(load({"HANGAR_HOME": str(home)}).models).ensure()
        filler = fill(disk, leave=80 << 20)  # 80 MiB free: not 40 MB plus the 64 MiB kept free

        refused = hangar(home, "pull", str(name), check=False)
        assert refused.returncode == 1
        blobs = store.blobs_dir
        assert f"Error: pull: needs 38.1 MiB (and keeps 64 MiB free) but {blobs} has " in refused.stderr
        assert "free some space (hangar prune, hangar rm) or set HANGAR_MODELS to a larger disk" in refused.stderr
        assert list(blobs.iterdir()) == [] and store.models() == []

        filler.unlink()
        hangar(home, "pull", str(name))
        assert [m.name for m in store.models()] == [name]
        assert hangar(home, "fsck").returncode == 0


def test_a_disk_that_fills_during_a_pull_stops_it_cleanly_and_it_resumes(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    source = Store(load({"HANGAR_HOME": str(tmp_path / "source")}).models).ensure()
    name = make_model(source, f"{registry.host}/team/slow:v1", os.urandom(60_000_000))
    weights = source.get(name).manifest.layers[0].digest
    hangar(tmp_path / "source", "push", str(name))

    with small_filesystem(tmp_path / "disk", "160m") as disk:
        home = disk / "home"
        store = Store(load({"HANGAR_HOME": str(home)}).models).ensure()
        # The free-space check passes (60 MB of 160 MiB); then another writer takes the rest.
        pull = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "pull", str(name), "--max-rate", "10MB"],
            env={**os.environ, "HANGAR_HOME": str(home)}, cwd=REPO_ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_until(lambda: any(p.name.endswith("-partial") for p in store.blobs_dir.iterdir()), 60, "the download")
        time.sleep(1)
        filler = fill(disk)
        _, stderr = pull.communicate(timeout=120)
        assert pull.returncode == 1, stderr
        error = stderr.strip().splitlines()[-1]
        assert error.startswith(
            f"Error: pull {weights.short}: the disk holding {store.blobs_dir} is full (No space left on device) with "
        )
        assert "still to write; free some space" in error and "it resumes where it stopped" in error
        assert store.models() == [] and not store.has_blob(weights)  # nothing partial visible

        filler.unlink()
        hangar(home, "pull", str(name))
        assert [m.name for m in store.models()] == [name]
        report = hangar(home, "fsck", check=False)
        assert report.returncode == 0, report.stdout
