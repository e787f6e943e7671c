"""Pushes to a registry on S3 (a real Swift, tests/swift.py): Hangar's client sending its parts
straight to the object store (X-Redirect-Uploads), with Ollama's wire client on the other side,
and two writers on one upload session."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from client.config import load
from client.store import Store
from formats.names import ModelName
from registry import db
from registry.db import utcnow
from registry.meta import Metadata
from tests.client.conftest import make_model
from tests.helpers import digest_of
from tests.ollama_wire import OllamaWireClient
from tests.servers import RegistryProcess
from tests.storage.conftest import RecordingProxy, hangar

MiB = 1024 * 1024


@pytest.fixture
def proxied_registry(
    recording_proxy: RecordingProxy, s3_registries: Callable[..., RegistryProcess]
) -> tuple[RegistryProcess, RecordingProxy]:
    """An S3-backed registry whose object store is reached through a recording proxy (under
    another host name than the registry's, as Ollama's redirect rule needs)."""
    return s3_registries(), recording_proxy


def test_hangar_push_sends_its_parts_straight_to_the_object_store(
    proxied_registry: tuple[RegistryProcess, RecordingProxy], tmp_path: Path
) -> None:
    """The registry offers redirected uploads; hangar push PUTs each 6 MiB part to its presigned
    URL (several at once, no credentials), and the commit checks the parts' etag and the sha256.
    Ollama's wire client then pulls the same bytes."""
    registry, proxy = proxied_registry
    weights = os.urandom(27 * MiB + 5)  # 5 parts, the last short
    alice = tmp_path / "alice"
    store = Store(load({"HANGAR_HOME": str(alice)}).models).ensure()
    name = make_model(store, f"{registry.host}/team/direct:v1", weights)
    assert hangar(alice, "push", "--part-size", "6MiB", str(name)).splitlines()[-1] == "success"

    digest = digest_of(weights)
    # The model layer's parts, PUT to presigned URLs without credentials (the config and the
    # template are smaller than S3's smallest part: the registry took them).
    puts = [(path, auth) for method, path, auth, _ in proxy.seen if method == "PUT" and "X-Amz-Signature=" in path]
    numbers = sorted(int(parse_qs(urlsplit(path).query)["partNumber"][0]) for path, _ in puts)
    assert numbers == [1, 2, 3, 4, 5]
    assert not [auth for _, auth in puts if auth]
    # The commit read the layer back once, whole, to hash it (its bytes never crossed the
    # registry); ListParts and the web site's look at the first MiB of a model are the other GETs.
    reads = [s for s in proxy.seen if s[0] == "GET" and "/data/" in s[1] and "X-Amz-Signature=" not in s[1]]
    assert len([s for s in reads if "uploadId=" not in s[1] and not s[3]]) == 1

    (tmp_path / "pulled").mkdir()
    _, files = OllamaWireClient(registry.url).pull("team/direct", "v1", tmp_path / "pulled")
    assert files[digest].read_bytes() == weights
    assert not (alice / "push").exists() or not list((alice / "push").rglob("*.json"))  # nothing left to resume


def test_ollama_pushes_to_the_object_store_and_hangar_pulls(
    proxied_registry: tuple[RegistryProcess, RecordingProxy], tmp_path: Path
) -> None:
    registry, _ = proxied_registry
    weights = os.urandom(13 * MiB + 1)
    config = b'{"model_format":"gguf"}'
    layers = [{"mediaType": "application/vnd.ollama.image.model", "digest": digest_of(weights), "size": len(weights)}]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": layers,
        }
    ).encode()
    pusher = OllamaWireClient(registry.url, min_part=5 * MiB)
    pusher.push("team/ollama", "v1", manifest, {digest_of(weights): weights, digest_of(config): config})
    assert pusher.redirected_parts == 3
    bob = tmp_path / "bob"
    assert hangar(bob, "pull", f"{registry.host}/team/ollama:v1").splitlines()[-1] == "success"
    pulled = Store(load({"HANGAR_HOME": str(bob)}).models)
    layer = pulled.get(ModelName.parse(f"{registry.host}/team/ollama:v1")).manifest.layers[0]
    assert pulled.blob_path(layer.digest).read_bytes() == weights


def test_hangar_push_takes_the_registry_path_where_redirects_are_off(
    tmp_path: Path, s3_registries: Callable[..., RegistryProcess]
) -> None:
    """``--redirect off`` (clients cannot reach the store): the registry does not offer redirected
    uploads, and hangar push sends its chunks to it."""
    registry = s3_registries("--redirect", "off")
    r = httpx.post(f"{registry.url}/v2/team/off/blobs/uploads/", headers={"X-Redirect-Uploads": "1"})
    assert r.status_code == 202 and "x-redirect-uploads" not in r.headers
    weights = os.urandom(11 * MiB)
    alice = tmp_path / "alice"
    store = Store(load({"HANGAR_HOME": str(alice)}).models).ensure()
    name = make_model(store, f"{registry.host}/team/off:v1", weights)
    assert hangar(alice, "push", "--part-size", "6MiB", str(name)).splitlines()[-1] == "success"
    blob = httpx.get(f"{registry.url}/v2/team/off/blobs/{digest_of(weights)}")
    assert blob.status_code == 200 and blob.content == weights


def test_the_writer_lease_of_an_upload_session(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    db.upgrade(url)
    meta = Metadata(db.make_engine(url, pooled=False))
    meta.start_upload("team/lease", "u1")

    def soon(seconds: float) -> dt.datetime:
        return utcnow() + dt.timedelta(seconds=seconds)

    first = soon(15)
    assert meta.lease_upload("u1", None, first)
    assert not meta.lease_upload("u1", None, soon(15))  # held
    renewed = soon(30)
    assert meta.lease_upload("u1", first, renewed)
    assert not meta.lease_upload("u1", first, soon(30))  # the holder's old lease is no claim
    assert meta.lease_upload("u1", renewed, utcnow())  # given back
    held = soon(0.2)
    assert meta.lease_upload("u1", None, held)
    time.sleep(0.3)  # its holder died: the lease runs out and another takes it
    assert meta.lease_upload("u1", None, soon(15))
    assert not meta.lease_upload("u1", held, utcnow())  # the dead holder cannot give it back
    assert not meta.lease_upload("no-such-upload", None, soon(15))


def test_two_writers_on_one_session_never_interleave(s3_registries: Callable[..., RegistryProcess]) -> None:
    """Two replicas (one database, one bucket) take a PATCH each for the same session at once, as
    a client's retry on the second while the first still streams: the second is refused (416,
    with the Range there is), the upload holds exactly the first one's bytes, and commits."""
    first, second = s3_registries(), s3_registries()
    started = httpx.post(f"{first.url}/v2/team/two/blobs/uploads/")
    path = urlsplit(started.headers["location"]).path
    mine, theirs = os.urandom(12 * MiB), os.urandom(12 * MiB)
    streaming = threading.Event()

    def slowly(body: bytes) -> Iterator[bytes]:
        for i in range(0, len(body), MiB):
            yield body[i : i + MiB]
            streaming.set()
            time.sleep(0.15)

    results: dict[str, int] = {}

    def patch() -> None:
        r = httpx.patch(
            f"{first.url}{path}", content=slowly(mine),
            headers={"Content-Range": f"0-{len(mine) - 1}", "Content-Length": str(len(mine))}, timeout=60,
        )  # fmt: skip
        results["first"] = r.status_code

    writer = threading.Thread(target=patch)
    writer.start()
    assert streaming.wait(10)
    time.sleep(0.3)
    try:
        r = httpx.patch(
            f"{second.url}{path}", content=theirs,
            headers={"Content-Range": f"0-{len(theirs) - 1}"}, timeout=60,
        )  # fmt: skip
        assert r.status_code == 416 and r.headers["upload-offset"] == "0"
        assert "another request is writing" in r.json()["errors"][0]["message"]
    except httpx.TransportError:
        pass  # refused before the body was sent: the server closed the connection under it
    writer.join(60)
    assert results["first"] == 202
    # The session holds the first writer's bytes, continues on either replica, and commits.
    status = httpx.get(f"{second.url}{path}")
    assert status.status_code == 204 and status.headers["upload-offset"] == str(len(mine))
    assert httpx.put(f"{second.url}{path}?digest={digest_of(mine)}").status_code == 201
    blob = httpx.get(f"{first.url}/v2/team/two/blobs/{digest_of(mine)}", follow_redirects=True)
    assert blob.content == mine
