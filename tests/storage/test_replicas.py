"""Two ``hangar registry serve`` replicas on one PostgreSQL and one Swift bucket, behind a
round-robin proxy (tests/roundrobin.py), behave as one registry: pushes and pulls, an upload that
moves between replicas, tokens issued by one and accepted by the other, a replica killed with -9
in the middle of a 200 MB push, skopeo and oras with a robot token, and Ollama's pull through the
presigned redirect without credentials reaching the object store.

Each replica has a data directory of its own: everything they share is in the database (accounts,
upload sessions, the token and URL signing keys) and in the bucket (blobs, upload parts and their
running hash). The object store is reached through a second proxy, as ``localhost``, so that the
tests see every request made to it and the registry's host name differs from the store's (as in
any real deployment; tests/storage/test_s3_registry.py explains why Ollama cares)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import oras.client
import pytest

from client.push import push
from tests.client.conftest import make_model
from tests.helpers import digest_of, write_oci_layout
from tests.ollama_wire import OllamaWireClient
from tests.people import Person, unique
from tests.registry.test_interop import skopeo
from tests.roundrobin import RoundRobinProxy
from tests.servers import PostgresCluster, RegistryProcess
from tests.swift import SwiftS3

MiB = 1024 * 1024


@dataclass
class Cluster:
    """Two replicas, the proxy in front of them, and the proxy in front of Swift. ``url`` and
    ``host`` are the proxy's (what clients use: the replicas' --public-url), so a Person takes a
    Cluster where it takes a RegistryProcess."""

    replicas: list[RegistryProcess]
    proxy: RoundRobinProxy
    store_proxy: RoundRobinProxy
    bucket: str
    database_url: str

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def host(self) -> str:
        return self.proxy.host

    @property
    def data_dir(self) -> Path:
        return self.replicas[0].data_dir

    def person(self, tmp: Path, prefix: str) -> Person:
        name = unique(prefix)
        return Person(self, tmp / name, name).signup()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cluster(postgres: PostgresCluster, swift: SwiftS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    store_proxy = RoundRobinProxy([f"127.0.0.1:{swift.port}"]).start()
    bucket = swift.create_bucket(f"hangar-{uuid.uuid4().hex[:12]}")
    database_url = postgres.create_database()
    replicas = [RegistryProcess(tmp / f"replica{i}", database_url) for i in range(2)]
    proxy = RoundRobinProxy(r.host for r in replicas).start()
    with pytest.MonkeyPatch.context() as env:
        for key, value in swift.env().items():
            env.setenv(key, value)
        # The presigned URLs name the store as localhost: another host than the registry's.
        env.setenv("AWS_ENDPOINT_URL", f"http://localhost:{store_proxy.port}")
        for r in replicas:
            r.extra_args += ["--auth", "required", "--signup", "open", "--public-url", proxy.url]
            r.extra_args += ["--storage", f"s3://{bucket}/registry?addressing_style=path"]
        try:
            # Together, on an empty database: they migrate it one after the other (an advisory lock).
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(RegistryProcess.start, replicas))
            yield Cluster(replicas, proxy, store_proxy, bucket, database_url)
        finally:
            for r in replicas:
                r.stop()
            proxy.stop()
            store_proxy.stop()


def test_push_and_pull_through_two_replicas(cluster: Cluster, tmp_path: Path) -> None:
    alice = cluster.person(tmp_path, "alice")
    name = alice.model(f"{alice.name}/model", size=23 * MiB + 5)
    first = len(cluster.proxy.seen)
    alice.push(name)
    bob = cluster.person(tmp_path, "bob")
    store_first = len(cluster.store_proxy.seen)
    bob.pull(name)
    manifest = alice.store.get(name).manifest
    for layer in manifest.layers:
        assert bob.store.blob_path(layer.digest).read_bytes() == alice.store.blob_path(layer.digest).read_bytes()
    # Both replicas took part in the push and the pull (round robin, one request each in turn).
    requests = cluster.proxy.seen[first:]
    assert {s.backend for s in requests if s.method in ("POST", "PATCH", "PUT")} == {r.host for r in cluster.replicas}
    assert {s.backend for s in requests if s.method == "GET"} == {r.host for r in cluster.replicas}
    # The bytes came from the object store (307 to a presigned URL), not through a replica.
    weights = manifest.layers[0].digest
    assert all(s.status == 307 for s in requests if s.method == "GET" and f"/blobs/{weights}" in s.target)
    presigned = [s for s in cluster.store_proxy.seen[store_first:] if "X-Amz-Signature=" in s.target]
    assert presigned and all(s.method == "GET" and s.status == 206 for s in presigned)


def test_an_upload_continues_on_the_other_replica(cluster: Cluster, tmp_path: Path) -> None:
    """Chunks of 3 MiB, below S3's 5 MiB part minimum: what one replica buffered (in the bucket,
    with the running hash) the other continues from."""
    alice = cluster.person(tmp_path, "alice")
    data = os.urandom(13 * MiB + 7)
    chunk = 3 * MiB
    with alice.http(f"repository:{alice.name}/chunks:pull,push") as http:
        first = len(cluster.proxy.seen)
        r = http.post(f"/v2/{alice.name}/chunks/blobs/uploads/")
        assert r.status_code == 202
        location = r.headers["location"]
        assert location.startswith(cluster.url + "/")  # the public URL: any replica may take it
        for i, offset in enumerate(range(0, len(data), chunk)):
            part = data[offset : offset + chunk]
            headers = {"Content-Range": f"{offset}-{offset + len(part) - 1}"}
            r = http.patch(location, content=part, headers=headers)
            assert r.status_code == 202, r.text
            assert r.headers["range"] == f"0-{offset + len(part) - 1}"
            location = r.headers["location"]
            if i % 2 == 0:  # asked of the other replica than the PATCH's (and the next PATCH moves)
                status = http.get(location)
                assert status.status_code == 204 and status.headers["range"] == f"0-{offset + len(part) - 1}"
        r = http.put(location, params={"digest": digest_of(data)})
        assert r.status_code == 201, r.text
        upload_requests = cluster.proxy.seen[first:]
        patches = [s.backend for s in upload_requests if s.method == "PATCH"]
        assert set(patches) == {r.host for r in cluster.replicas}
        # Every request after the first went to the other replica than the one before.
        backends = [s.backend for s in upload_requests]
        assert all(a != b for a, b in itertools.pairwise(backends))
        blob = http.get(f"/v2/{alice.name}/chunks/blobs/{digest_of(data)}", follow_redirects=True)
        assert blob.status_code == 200 and blob.content == data


def test_tokens_issued_by_one_replica_are_accepted_by_the_other(cluster: Cluster, tmp_path: Path) -> None:
    """The signing keys live in the database (registry.meta ``secret``), not in a replica."""
    alice = cluster.person(tmp_path, "alice")
    alice.account.set_default_visibility(alice.name, "private")
    name = alice.model(f"{alice.name}/secret")
    alice.push(name)
    digest = alice.store.get(name).manifest.layers[0].digest
    token_at = len(cluster.proxy.seen)
    token = alice.token(f"repository:{alice.name}/secret:pull")
    issuer = cluster.proxy.seen[token_at].backend
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    first = len(cluster.proxy.seen)
    for _ in range(4):  # two rounds of the rotation: each replica answers twice
        r = httpx.get(f"{cluster.url}/v2/{alice.name}/secret/manifests/latest", headers=headers)
        assert r.status_code == 200, r.text
        assert r.content == alice.store.get(name).manifest.raw
    answered = {s.backend for s in cluster.proxy.seen[first:]}
    assert answered == {r.host for r in cluster.replicas} and issuer in answered
    # The blob URL the redirect gives is signed by the object store; our own signed URLs (for
    # --redirect off) use the shared "blob-url" key: a replica's 307 works wherever it is followed.
    r = httpx.get(f"{cluster.url}/v2/{alice.name}/secret/blobs/{digest}", headers=headers)
    assert r.status_code == 307
    assert httpx.get(r.headers["location"], headers={"Range": "bytes=0-9"}).status_code == 206
    # Without the token: nothing, from either replica.
    for _ in range(2):
        assert httpx.get(f"{cluster.url}/v2/{alice.name}/secret/manifests/latest").status_code == 401


def test_a_signed_token_request_replayed_to_the_other_replica_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """Nonces are recorded in the database: a replay does not become valid by going elsewhere."""
    alice = cluster.person(tmp_path, "alice")
    ts, nonce = int(time.time()), "replay-" + uuid.uuid4().hex
    first = len(cluster.proxy.seen)
    assert alice.token_response(f"repository:{alice.name}/x:pull", ts=ts, nonce=nonce).status_code == 200
    replay = alice.token_response(f"repository:{alice.name}/x:pull", ts=ts, nonce=nonce)
    backends = [s.backend for s in cluster.proxy.seen[first:]]
    assert backends[0] != backends[1]
    assert replay.status_code == 401 and "nonce" in replay.text.lower()


def test_skopeo_and_oras_with_a_robot_token(cluster: Cluster, tmp_path: Path) -> None:
    alice = cluster.person(tmp_path, "alice")
    alice.account.set_default_visibility(alice.name, "private")
    robot = alice.account.create_robot(alice.name, "ci", "push", 3600)
    creds = f"{robot['username']}:{robot['token']}"
    layers = [("application/vnd.ollama.image.model", os.urandom(9 * MiB + 1))]
    manifest_digest = write_oci_layout(tmp_path / "src", "v1", b'{"model_format":"gguf"}', layers)
    target = f"docker://{cluster.host}/{alice.name}/artifact:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, "--preserve-digests",
           f"oci:{tmp_path / 'src'}:v1", target)  # fmt: skip
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, "--preserve-digests",
           target, f"oci:{tmp_path / 'dst'}:v1")  # fmt: skip
    for blob in (tmp_path / "src" / "blobs" / "sha256").iterdir():
        assert (tmp_path / "dst" / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()
    inspected = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds, target).stdout.encode()
    assert digest_of(inspected) == manifest_digest
    # Private: without the robot's credentials skopeo sees nothing.
    refused = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", target], capture_output=True)
    assert refused.returncode != 0

    data = os.urandom(6 * MiB + 3)
    (tmp_path / "model.gguf").write_bytes(data)
    client = oras.client.OrasClient(hostname=cluster.host, insecure=True)
    client.auth.set_basic_auth(robot["username"], robot["token"])  # what login() does, without docker
    ref = f"{cluster.host}/{alice.name}/oras:v1"
    response = client.push(target=ref, files=[str(tmp_path / "model.gguf")], disable_path_validation=True)
    assert response.status_code == 201
    assert client.get_manifest(ref)["layers"][0]["digest"] == digest_of(data)
    files = client.pull(target=ref, outdir=str(tmp_path / "oras-out"))
    assert [Path(f).read_bytes() for f in files] == [data]


def test_ollama_pulls_through_the_redirect_without_sending_credentials_to_the_store(
    cluster: Cluster, tmp_path: Path
) -> None:
    alice = cluster.person(tmp_path, "alice")
    alice.account.set_default_visibility(alice.name, "private")
    name = alice.model(f"{alice.name}/ollama", size=11 * MiB + 3)
    alice.push(name)
    weights = alice.store.get(name).manifest.layers[0].digest
    puller = OllamaWireClient(cluster.url, min_part=4 * MiB, key=alice.identity.private_key)
    (tmp_path / "pulled").mkdir()
    first = len(cluster.store_proxy.seen)
    raw, files = puller.pull(f"{alice.name}/ollama", "latest", tmp_path / "pulled")
    assert raw == alice.store.get(name).manifest.raw
    assert files[str(weights)].read_bytes() == alice.store.blob_path(weights).read_bytes()
    # The client held a bearer token, and sent it to the registry only.
    assert puller.token and any("Bearer" in h.get("authorization", "") for _, _, h in puller.requests)
    for _, url, headers in puller.requests:
        if "authorization" in {k.lower() for k in headers}:
            assert urlsplit(url).netloc == cluster.host, url
    # Three 4 MiB parts of the weights (and the small blobs whole), straight from the store, on
    # presigned URLs: no Authorization header, Go's User-Agent, a Range each.
    reads = [s for s in cluster.store_proxy.seen[first:] if "X-Amz-Signature=" in s.target]
    parts = [s for s in reads if s.header("Range") and s.status == 206]
    assert len(parts) >= 3 and {s.header("User-Agent") for s in reads} == {"Go-http-client/1.1"}
    assert not [s for s in reads if s.header("Authorization")]


@pytest.fixture(params=["to the store", "through the registry"])
def upload_path(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[str]:
    """How ``hangar push`` sends its parts: straight to presigned part URLs on the store (a
    body-less PATCH through a replica for each URL: what it asks for with ``X-Redirect-Uploads``),
    or in PATCH bodies through the replicas (replicas with ``--redirect off`` do not redirect)."""
    if request.param == "to the store":
        yield request.param
        return
    for r in cluster.replicas:
        r.extra_args += ["--redirect", "off"]
        r.restart()
    try:
        yield request.param
    finally:
        for r in cluster.replicas:
            r.extra_args = r.extra_args[:-2]
            r.restart()


def test_kill_9_of_a_replica_during_a_200_mb_push(cluster: Cluster, upload_path: str, tmp_path: Path) -> None:
    """40 MiB into the push's bytes (counted into the replicas or into the store, whichever way
    they go), the replica that took the upload's last request is killed; the proxy takes it out
    of the rotation (a failed health check) and the client's retries go to the other replica,
    which knows the session from the database and the bucket."""
    alice = cluster.person(tmp_path, "alice")
    weights = os.urandom(200 * 1000 * 1000)
    name = make_model(alice.store, f"{cluster.host}/{alice.name}/big:latest", weights)
    uploads = f"/v2/{alice.name}/big/blobs/uploads/"

    def pushed() -> int:
        return sum(cluster.proxy.bytes_up.values()) + sum(cluster.store_proxy.bytes_up.values())

    before = pushed()
    killed: list[RegistryProcess] = []
    at_kill = 0
    failure: list[BaseException] = []

    def run_push() -> None:
        try:
            asyncio.run(push(name, alice.store, alice.settings))
        except BaseException as e:
            failure.append(e)

    pusher = threading.Thread(target=run_push)
    pusher.start()
    try:
        deadline = time.monotonic() + 120
        while not killed and pusher.is_alive() and time.monotonic() < deadline:
            if pushed() - before > 40 * MiB:
                last = [s.backend for s in cluster.proxy.seen if uploads in s.target][-1]
                victim = next(r for r in cluster.replicas if r.host == last)
                victim.kill()
                cluster.proxy.drop(victim.host)
                killed.append(victim)
                at_kill = len(cluster.proxy.seen)
            time.sleep(0.005)
        pusher.join(300)
        assert killed, "the push ended before a replica had 40 MiB of it"
        assert not pusher.is_alive() and not failure, failure
        survivor = next(r for r in cluster.replicas if r is not killed[0])
        # The upload went on after the kill, on the survivor, which also took the manifest.
        after = [s for s in cluster.proxy.seen[at_kill:] if uploads in s.target or "/big/manifests/" in s.target]
        assert any(s.method == "PUT" and uploads in s.target and s.status == 201 for s in after)
        # The weights' session is the first (the small blobs go after it, always through the registry).
        started = next(s for s in cluster.proxy.seen if s.method == "POST" and uploads in s.target and s.status == 202)
        session = urlsplit(started.response_header("Location")).path
        patches = {s.status for s in cluster.proxy.seen if s.method == "PATCH" and session in s.target}
        # 0 or 502: cut by the kill; 416: the dead replica's writer lease on the session had not
        # run out yet (registry/api/uploads.py), so the client asked again where to continue.
        assert patches - {0, 502, 416} == ({307} if upload_path == "to the store" else {202})
        assert {s.backend for s in after if s.status} == {survivor.host}
        assert cluster.proxy.served_by("PUT", f"/v2/{alice.name}/big/manifests/") == [survivor.host]
        # Nothing lost: the registry knows the blob at its full size, a pull gets the right bytes.
        digest = digest_of(weights)
        with alice.http(f"repository:{alice.name}/big:pull") as http:
            assert http.head(f"/v2/{alice.name}/big/blobs/{digest}").headers["content-length"] == str(len(weights))
        bob = cluster.person(tmp_path, "bob")
        bob.pull(name)
        pulled = bob.store.blob_path(bob.store.get(name).manifest.layers[0].digest)
        assert _sha256_file(pulled) == digest
    finally:
        pusher.join(300)
        for replica in killed:  # back in the rotation for whatever runs next
            replica.start()
            cluster.proxy.add(replica.host)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
