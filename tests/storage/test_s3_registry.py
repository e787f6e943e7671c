"""A registry on S3 (a real Swift, tests/swift.py): pushes and pulls by hangar and skopeo, blob GETs
answered with a 307 to a presigned URL on the object store, and ``--redirect off``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError

from client.config import load
from client.store import Store
from tests.client.conftest import make_model
from tests.helpers import digest_of, push_blob, push_model, write_oci_layout
from tests.servers import REPO_ROOT, RegistryProcess
from tests.storage.conftest import RecordingProxy, hangar
from tests.swift import SwiftS3


def test_hangar_push_and_pull_through_s3_with_redirects(
    s3_registry: RegistryProcess, swift: SwiftS3, s3_url: str, tmp_path: Path
) -> None:
    weights = os.urandom(21 * 1024 * 1024 + 11)  # parts of 16 MiB, a tail, two chunk sums
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    store = Store(load({"HANGAR_HOME": str(alice)}).models).ensure()
    name = make_model(store, f"{s3_registry.host}/team/model:v1", weights)
    assert hangar(alice, "push", str(name)).splitlines()[-1] == "success"

    # The bytes are in the bucket, under their digest; nothing is left of the upload sessions.
    digest = digest_of(weights)
    client = swift.client()
    bucket = urlsplit(s3_url).netloc
    head = client.head_object(Bucket=bucket, Key=f"registry/blobs/sha256/{digest[7:9]}/{digest[7:]}")
    assert head["Metadata"]["hangar-size"] == str(len(weights))  # the blob key names the bytes
    data = client.head_object(Bucket=bucket, Key="registry/" + head["Metadata"]["hangar-data"])
    assert data["ContentLength"] == len(weights)
    assert client.list_objects_v2(Bucket=bucket, Prefix="registry/uploads/").get("KeyCount", 0) == 0
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")

    # A blob GET is a 307 to a presigned URL on the object store, which serves ranges to anyone.
    blob_url = f"{s3_registry.url}/v2/team/model/blobs/{digest}"
    r = httpx.get(blob_url)
    assert r.status_code == 307 and r.headers["docker-content-digest"] == digest
    direct = r.headers["location"]
    assert direct.startswith(swift.endpoint + "/")
    part = httpx.get(direct, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == weights[100:200]
    # HEAD and the chunk sums come from the database; the sums name the object store as the source.
    assert httpx.head(blob_url).headers["content-length"] == str(len(weights))
    sums = httpx.get(f"{s3_registry.url}/v2/team/model/chunksums/{digest}")
    assert sums.headers["content-location"].startswith(swift.endpoint + "/")
    first = sums.text.splitlines()[0].split(" ")[0]
    assert first == "sha256:" + hashlib.sha256(weights[: 16 * 1024 * 1024]).hexdigest()

    out = hangar(bob, "pull", f"{s3_registry.host}/team/model:v1").splitlines()
    assert out[-1] == "success"
    pulled = Store(load({"HANGAR_HOME": str(bob)}).models)
    assert pulled.blob_path(pulled.get(name).manifest.layers[0].digest).read_bytes() == weights


def test_skopeo_copies_in_and_out_of_an_s3_registry(s3_registry: RegistryProcess, tmp_path: Path) -> None:
    exe = shutil.which("skopeo")
    assert exe, "skopeo is not installed: run scripts/test.sh, which installs it"
    layers = [("application/vnd.ollama.image.model", os.urandom(7_000_000))]
    manifest_digest = write_oci_layout(tmp_path / "src", "v1", b'{"model_format":"gguf"}', layers)
    target = f"docker://{s3_registry.host}/team/artifact:v1"

    def skopeo(*args: str) -> None:
        subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, check=True)

    skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{tmp_path / 'src'}:v1", target)
    skopeo("copy", "--src-tls-verify=false", "--preserve-digests", target, f"oci:{tmp_path / 'dst'}:v1")
    index = json.loads((tmp_path / "dst" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == manifest_digest
    for blob in (tmp_path / "src" / "blobs" / "sha256").iterdir():
        assert (tmp_path / "dst" / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()


def test_redirect_off_streams_through_the_registry(s3_registries: Callable[..., RegistryProcess]) -> None:
    proc = s3_registries("--redirect", "off")
    data = os.urandom(6 * 1024 * 1024)
    with httpx.Client(base_url=proc.url) as client:
        blob = push_blob(client, "team/plain", data)
        r = client.get(f"/v2/team/plain/blobs/{blob['digest']}")
        assert r.status_code == 200 and r.content == data
        signed = r.headers["location"]  # our own signed URL, as with the filesystem
        assert signed.startswith(proc.url)
        assert client.get(signed, headers={"Range": "bytes=5-9"}).content == data[5:10]
        # Mounts and deletes are metadata: the bytes stay in the bucket for gc.
        mounted = client.post(f"/v2/team/other/blobs/uploads/?mount={blob['digest']}&from=team/plain")
        assert mounted.status_code == 201
        assert client.delete(f"/v2/team/plain/blobs/{blob['digest']}").status_code == 202
        assert client.get(f"/v2/team/other/blobs/{blob['digest']}").content == data


def test_gc_deletes_unused_blobs_and_abandoned_uploads_in_the_bucket(
    s3_registry: RegistryProcess, swift: SwiftS3, s3_url: str
) -> None:
    bucket = urlsplit(s3_url).netloc
    client = swift.client()
    with httpx.Client(base_url=s3_registry.url) as http:
        _, used = push_model(http, "team/gc")
        orphan = push_blob(http, "team/gc", os.urandom(1000))
        assert http.delete(f"/v2/team/gc/blobs/{orphan['digest']}").status_code == 202
        abandoned = http.post("/v2/team/gc/blobs/uploads/")
        assert http.patch(abandoned.headers["location"], content=os.urandom(6_000_000)).status_code == 202

        def gc(*args: str) -> str:
            cmd = [sys.executable, "-m", "cli", "registry", "gc", "--data-dir", str(s3_registry.data_dir)]
            cmd += ["--storage", s3_url, *args]
            return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout

        key = f"registry/blobs/sha256/{orphan['digest'][7:9]}/{orphan['digest'][7:]}"
        assert client.head_object(Bucket=bucket, Key=key)["Metadata"]["hangar-size"] == "1000"
        time.sleep(1.5)  # the upload session is then older than --upload-max-age 1s
        out = gc("--grace", "0s", "--upload-max-age", "1s")
        assert f"deleted blob {orphan['digest']}" in out and "1 upload(s)" in out
        with pytest.raises(ClientError):
            client.head_object(Bucket=bucket, Key=key)
        assert client.list_objects_v2(Bucket=bucket, Prefix="registry/uploads/").get("KeyCount", 0) == 0
        assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
        # The bytes went with the blob key: what is left in data/ is what the manifest uses.
        left = client.list_objects_v2(Bucket=bucket, Prefix="registry/data/").get("Contents", [])
        assert len(left) == len(used)
        for desc in used:  # what a manifest uses stays, and is still served
            assert http.head(f"/v2/team/gc/blobs/{desc['digest']}").status_code == 200
            assert http.get(f"/v2/team/gc/blobs/{desc['digest']}", follow_redirects=True).status_code == 200


def test_an_upload_survives_kill_9_and_continues_on_another_process(
    s3_registries: Callable[..., RegistryProcess], s3_url: str, swift: SwiftS3
) -> None:
    """One upload, two registry processes on the same database and bucket (as two replicas, or
    one restarted): the first is killed mid-upload, the second resumes the session from what the
    bucket's record holds, running hash included, so its commit reads nothing back."""
    data = os.urandom(20 * 1024 * 1024 + 3)
    cut = 9 * 1024 * 1024
    first = s3_registries()
    try:
        started = httpx.post(f"{first.url}/v2/team/resume/blobs/uploads/")
        path = urlsplit(started.headers["location"]).path
        r = httpx.patch(f"{first.url}{path}", content=data[:cut], headers={"Content-Range": f"0-{cut - 1}"})
        assert r.status_code == 202
    finally:
        first.kill()
    second = s3_registries()
    status = httpx.get(f"{second.url}{path}")
    assert status.status_code == 204 and status.headers["upload-offset"] == str(cut)
    rest = data[cut:]
    r = httpx.patch(f"{second.url}{path}", content=rest, headers={"Content-Range": f"{cut}-{len(data) - 1}"})
    assert r.status_code == 202 and r.headers["upload-offset"] == str(len(data))
    bucket, upload_id = urlsplit(s3_url).netloc, path.rsplit("/", 1)[1]
    record = json.loads(
        swift.client().get_object(Bucket=bucket, Key=f"registry/uploads/{upload_id}/record")["Body"].read()
    )
    assert json.loads(record["hash"])["size"] == len(data)  # the commit will not re-read
    digest = digest_of(data)
    assert httpx.put(f"{second.url}{path}?digest={digest}").status_code == 201
    blob = httpx.get(f"{second.url}/v2/team/resume/blobs/{digest}", follow_redirects=True)
    assert blob.content == data


@pytest.fixture
def s3_registry_elsewhere(
    s3_registries: Callable[..., RegistryProcess], swift: SwiftS3, monkeypatch: pytest.MonkeyPatch
) -> RegistryProcess:
    """An S3-backed registry whose object store has another host name (``localhost``) than the
    registry (``127.0.0.1``), as in any real deployment: Ollama follows a redirect to the
    registry's own host name itself (port ignored) and then finds no Location."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://localhost:{swift.port}")
    return s3_registries()


def test_ollama_redirected_part_uploads_go_straight_to_the_object_store(
    s3_registry_elsewhere: RegistryProcess, swift: SwiftS3, s3_url: str, tmp_path: Path
) -> None:
    """Ollama's X-Redirect-Uploads: 1: each PATCH is answered with a 307 to a presigned
    UploadPart URL, the client PUTs the part there; the registry completes the multipart upload at
    the final PUT, reads it back once to verify the sha256, and checks the client's etag. The pull
    then reads its parts from presigned URLs on the store."""
    from tests.ollama_wire import OllamaWireClient

    s3_registry = s3_registry_elsewhere

    weights = os.urandom(17 * 1024 * 1024 + 5)  # parts of 6 MiB: three, the last short
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
    blobs = {digest_of(weights): weights, digest_of(config): config}
    pusher = OllamaWireClient(s3_registry.url, min_part=6 * 1024 * 1024)
    pusher.push("team/ollama", "v1", manifest, blobs)
    assert pusher.redirected_parts == 3  # the 23-byte config is too small a first part: sent here
    puller = OllamaWireClient(s3_registry.url)
    (tmp_path / "pulled").mkdir()
    _, files = puller.pull("team/ollama", "v1", tmp_path / "pulled")
    assert files[digest_of(weights)].read_bytes() == weights
    bucket = urlsplit(s3_url).netloc
    assert swift.client().list_objects_v2(Bucket=bucket, Prefix="registry/uploads/").get("KeyCount", 0) == 0

    # A part that is not what the client says (its etag): refused, nothing published.
    other = os.urandom(7 * 1024 * 1024)
    with httpx.Client(base_url=s3_registry.url) as http:
        location = http.post("/v2/team/ollama/blobs/uploads/").headers["location"]
        headers = {"Content-Range": f"0-{len(other) - 1}", "X-Redirect-Uploads": "1"}
        r = http.patch(location, content=other, headers=headers)
        assert r.status_code == 307 and r.headers["location"].startswith(f"http://localhost:{swift.port}/")
        assert httpx.put(r.headers["location"], content=other).status_code == 200
        # A plain chunk cannot join an upload whose parts go to the store.
        plain = http.patch(r.headers["docker-upload-location"], content=b"x")
        assert plain.status_code == 400 and plain.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
        wrong = f"{hashlib.md5(b'not it').hexdigest()}-1"
        bad = http.put(f"{r.headers['docker-upload-location']}?digest={digest_of(other)}&etag={wrong}")
        assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert http.head(f"/v2/team/ollama/blobs/{digest_of(other)}").status_code == 404


def test_hangar_pull_reads_from_the_object_store_without_credentials(
    tmp_path: Path, recording_proxy: RecordingProxy, s3_registries: Callable[..., RegistryProcess]
) -> None:
    """With authentication on, hangar pull holds a bearer token for the registry; its ranged
    GETs go to the object store's presigned URLs, which see no token."""
    from tests.people import Person

    proxy = recording_proxy
    registry = s3_registries("--auth", "required", "--signup", "open")
    alice = Person(registry, tmp_path / "alice", "alice").signup()
    name = alice.model("alice/model", size=18 * 1024 * 1024)
    alice.push(name)
    weights = alice.store.blob_path(alice.store.get(name).manifest.layers[0].digest).read_bytes()
    # The push sent the layer's part to a presigned URL, and its token never left for the store.
    assert [s for s in proxy.seen if s[0] == "PUT" and "X-Amz-Signature=" in s[1] and "partNumber=1" in s[1]]
    assert not [s for s in proxy.seen if s[2].lower().startswith("bearer")]
    bob = Person(registry, tmp_path / "bob", "bob").signup()
    proxy.seen.clear()
    bob.pull(name)
    pulled = bob.store.blob_path(bob.store.get(name).manifest.layers[0].digest).read_bytes()
    assert pulled == weights
    # The blob's bytes are at data/<upload id>, which the blob key names.
    reads = [s for s in proxy.seen if s[0] == "GET" and "/registry/data/" in s[1]]
    assert reads and all("X-Amz-Signature=" in path for _, path, _, _ in reads)  # presigned
    assert any(rng for *_, rng in reads)  # ranged parts
    assert not [s for s in proxy.seen if s[2].lower().startswith("bearer")]  # no token left us
