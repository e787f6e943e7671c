"""Clients we did not write — skopeo, the oras Python SDK and a Docker-CLI-like token flow — against
a registry with authentication required, using robot tokens as a CI job would."""

import base64
import io
import json
import shutil
import subprocess
import tarfile
import types
from pathlib import Path
from typing import Any

import httpx
import oras.client
import oras.decorator
import pytest

from client.archive import export_model, import_model
from client.config import load
from client.store import Store
from formats import mediatypes as mt
from formats.auth import parse_challenge
from formats.names import ModelName
from tests.helpers import digest_of, random_bytes, write_oci_layout
from tests.people import Person, audit_rows

OLLAMA_MODEL = "application/vnd.ollama.image.model"


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("skopeo")
    assert exe, "skopeo is not installed: run scripts/test, which installs it"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, check=True)


def skopeo_fails(*args: str) -> str:
    """skopeo's stderr for a command that must fail."""
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0, done.stdout
    return done.stderr


def private_owner(people: Any) -> Person:  # people is the conftest factory
    """Someone whose models are private, so that nothing below works without credentials."""
    owner: Person = people("alice")
    owner.account.set_default_visibility(owner.name, "private")
    return owner


def robot_creds(owner: Person, name: str, scope: str) -> tuple[str, str]:
    robot = owner.account.create_robot(owner.name, name, scope, 3600)
    return str(robot["username"]), str(robot["token"])


def test_skopeo_with_robot_tokens_copies_in_and_out_keeping_digests(people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = private_owner(people)
    host = alice.registry.host
    pusher, push_token = robot_creds(alice, "release", "push")
    push_creds = f"{pusher}:{push_token}"
    reader, pull_token = robot_creds(alice, "ci", "pull")
    pull_creds = f"{reader}:{pull_token}"

    weights = random_bytes(2_000_000)
    src = tmp_path / "src"
    layers = [(OLLAMA_MODEL, weights), ("application/vnd.ollama.image.template", b"{{ .Prompt }}")]
    manifest_digest = write_oci_layout(
        src, "v1", b'{"model_format":"gguf"}', layers, artifact_type="application/vnd.example.model"
    )
    repo = f"{alice.name}/model"
    target = f"docker://{host}/{repo}:v1"
    assert "unauthorized" in skopeo_fails("copy", "--dest-tls-verify=false", f"oci:{src}:v1", target)
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", push_creds, "--preserve-digests", f"oci:{src}:v1", target)
    assert audit_rows(alice.registry, actor=f"robot:{pusher}", action="push", target=f"{repo}:v1", outcome="ok")

    with alice.http(f"repository:{repo}:pull") as http:
        assert digest_of(http.get(f"/v2/{repo}/manifests/v1").content) == manifest_digest
    inspected = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", pull_creds, target).stdout.encode()
    assert digest_of(inspected) == manifest_digest
    tags = skopeo("list-tags", "--tls-verify=false", "--creds", pull_creds, f"docker://{host}/{repo}").stdout
    assert json.loads(tags)["Tags"] == ["v1"]

    dst = tmp_path / "dst"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", pull_creds, "--preserve-digests", target, f"oci:{dst}:v1")
    assert json.loads((dst / "index.json").read_text())["manifests"][0]["digest"] == manifest_digest
    for blob in (src / "blobs" / "sha256").iterdir():
        assert (dst / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()

    # Registry to registry (a cross-repository blob mount) and delete, with the push robot.
    other = f"docker://{host}/{alice.name}/copy:v1"
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--src-creds", push_creds,
           "--dest-creds", push_creds, "--preserve-digests", target, other)  # fmt: skip
    copied = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", push_creds, other).stdout.encode()
    assert digest_of(copied) == manifest_digest
    # The pull robot may not delete; the push robot may.
    assert "denied" in skopeo_fails("delete", "--tls-verify=false", "--creds", pull_creds, other)
    skopeo("delete", "--tls-verify=false", "--creds", push_creds, other)
    with alice.http(f"repository:{alice.name}/copy:pull") as http:
        assert http.get(f"/v2/{alice.name}/copy/manifests/v1").status_code == 404


def oras_client(home: Path, registry_host: str, username: str, password: str) -> oras.client.OrasClient:
    """An oras-py client signed in as ``oras login`` would, its Docker config kept under ``home``."""
    client = oras.client.OrasClient(hostname=registry_host, insecure=True)
    home.mkdir(parents=True, exist_ok=True)
    client.login(username=username, password=password, hostname=registry_host, config_path=str(home / "config.json"))
    return client


def test_oras_pushes_and_pulls_with_robot_tokens(people, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # oras-py retries a refused request five times, sleeping 3 + 3**n seconds between tries.
    monkeypatch.setattr(oras.decorator, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    alice = private_owner(people)
    host = alice.registry.host
    data = random_bytes(1_200_000)
    (tmp_path / "model.gguf").write_bytes(data)
    target = f"{host}/{alice.name}/model:v1"

    # The failure the issue reported: a push robot's first token comes from a blob HEAD's
    # challenge (scope pull), and oras-py sends that token again after the upload's 401.
    client = oras_client(tmp_path / "pusher", host, *robot_creds(alice, "ci", "push"))
    response = client.push(target=target, files=[str(tmp_path / "model.gguf")], disable_path_validation=True)
    assert response.status_code == 201
    assert client.get_tags(f"{host}/{alice.name}/model") == ["v1"]
    assert client.get_manifest(target)["layers"][0]["digest"] == digest_of(data)

    reader = oras_client(tmp_path / "reader", host, *robot_creds(alice, "reader", "pull"))
    files = reader.pull(target=target, outdir=str(tmp_path / "out"))
    assert [Path(f).read_bytes() for f in files] == [data]

    # A pull robot's token never carries push, however oras asks: the upload is refused (403,
    # which oras-py reports as "Cannot respond to request for authentication").
    reader_name = f"{alice.name}+reader"
    with pytest.raises(ValueError):
        reader.push(target=f"{host}/{alice.name}/model:v2", files=[str(tmp_path / "model.gguf")],
                    disable_path_validation=True)  # fmt: skip
    assert audit_rows(alice.registry, actor=f"robot:{reader_name}", action="push", outcome="denied")
    # Nor does a push robot's token reach another namespace.
    bob = private_owner(people)
    with pytest.raises(ValueError):
        client.push(target=f"{host}/{bob.name}/model:v1", files=[str(tmp_path / "model.gguf")],
                    disable_path_validation=True)  # fmt: skip
    with bob.http(f"repository:{bob.name}/model:pull") as http:
        assert http.get(f"/v2/{bob.name}/model/tags/list").status_code == 404

    # Without credentials oras sees nothing of a private model.
    anonymous = oras.client.OrasClient(hostname=host, insecure=True)
    with pytest.raises(ValueError):
        anonymous.pull(target=target, outdir=str(tmp_path / "nothing"))


def docker_token(registry_url: str, username: str, password: str, *scopes: str) -> httpx.Response:
    """The token request the Docker CLI makes: the challenge's realm and service, ``account``,
    ``client_id``, ``offline_token=true`` and HTTP Basic credentials."""
    challenge = httpx.get(f"{registry_url}/v2/")
    assert challenge.status_code == 401
    fields = parse_challenge(challenge.headers["www-authenticate"])
    assert fields is not None
    params = [("account", username), ("client_id", "docker"), ("offline_token", "true"), ("service", fields["service"])]
    params += [("scope", s) for s in scopes]
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    return httpx.get(fields["realm"], params=params, headers={"Authorization": f"Basic {basic}"})


def test_docker_cli_token_flow_with_a_robot(people) -> None:  # type: ignore[no-untyped-def]
    alice = private_owner(people)
    url = alice.registry.url
    username, password = robot_creds(alice, "docker", "push")
    repo = f"{alice.name}/model"

    # `docker login`: a token request with no scope is the check that the credentials work.
    login = docker_token(url, username, password)
    assert login.status_code == 200 and login.json()["token"]
    refused = docker_token(url, username, password + "x")
    assert refused.status_code == 401 and "invalid or expired robot credentials" in refused.text

    # `docker push`: a token for pull,push, then bearer requests.
    token = docker_token(url, username, password, f"repository:{repo}:pull,push").json()["token"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        config, weights = b'{"model_format":"gguf"}', random_bytes(300_000)
        for blob in (config, weights):
            started = http.post(f"/v2/{repo}/blobs/uploads/")
            assert started.status_code == 202, started.text
            done = http.put(started.headers["location"], params={"digest": digest_of(blob)}, content=blob)
            assert done.status_code == 201, done.text
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_MANIFEST,
            "config": {"mediaType": mt.DOCKER_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": OLLAMA_MODEL, "digest": digest_of(weights), "size": len(weights)}],
        }).encode()  # fmt: skip
        put = http.put(f"/v2/{repo}/manifests/latest", content=manifest, headers={"Content-Type": mt.DOCKER_MANIFEST})
        assert put.status_code == 201, put.text

    # `docker pull` by a pull robot: a token for pull only, which cannot push.
    reader, secret = robot_creds(alice, "puller", "pull")
    token = docker_token(url, reader, secret, f"repository:{repo}:pull,push").json()["token"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        got = http.get(f"/v2/{repo}/manifests/latest", headers={"Accept": mt.DOCKER_MANIFEST})
        assert got.status_code == 200 and got.content == manifest
        assert http.get(f"/v2/{repo}/blobs/{digest_of(weights)}", follow_redirects=True).content == weights
        denied = http.post(f"/v2/{repo}/blobs/uploads/")
        assert denied.status_code == 403 and "access denied" in denied.text


def test_skopeo_reads_an_export_by_its_tag_and_import_takes_its_archives(people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = private_owner(people)
    host = alice.registry.host
    name = alice.model(f"{alice.name}/exported", tag="v3", size=400_000)
    original = alice.store.get(name).manifest
    assert original.media_type == mt.DOCKER_MANIFEST  # Ollama's, which OCI tools skip by tag
    archive = tmp_path / "model.tar"
    export_model(alice.store, name, archive)

    # Tagged, as skopeo's users write it, into a directory and into the registry.
    out = tmp_path / "dir"
    skopeo("copy", "--preserve-digests", f"oci-archive:{archive}:v3", f"dir:{out}")
    copied = json.loads((out / "manifest.json").read_bytes())
    assert copied["mediaType"] == mt.OCI_MANIFEST
    assert [(d["digest"], d["size"]) for d in [copied["config"], *copied["layers"]]] == [
        (str(d.digest), d.size) for d in original.blobs()
    ]
    for desc in original.blobs():
        assert (out / desc.digest.hex).read_bytes() == alice.store.blob_path(desc.digest).read_bytes()
    pusher, token = robot_creds(alice, "ci", "push")
    target = f"docker://{host}/{alice.name}/from-archive:v3"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"{pusher}:{token}", "--preserve-digests",
           f"oci-archive:{archive}:v3", target)  # fmt: skip

    # What skopeo pushed is a model hangar pulls, with the same config and layers.
    pulled = ModelName.parse(f"{host}/{alice.name}/from-archive:v3")
    alice.pull(pulled)
    assert [(d.digest, d.size) for d in alice.store.get(pulled).manifest.blobs()] == [
        (d.digest, d.size) for d in original.blobs()
    ]

    # Import puts back the original manifest (the digest the registry knows) under its name.
    other = Store(load({"HANGAR_HOME": str(tmp_path / "airgapped")}).models)
    assert import_model(other, archive).name == name
    assert other.get(name).manifest.raw == original.raw

    # An archive skopeo wrote (ref.name a bare tag, no name of ours) is named after its file.
    written = tmp_path / "written.tar"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", f"{pusher}:{token}", target, f"oci-archive:{written}:v3")
    result = import_model(other, written)
    assert result.name == ModelName.parse("written:v3") and result.blobs_added == 0
    assert [d.digest for d in other.get(result.name).manifest.blobs()] == [d.digest for d in original.blobs()]

    # An archive whose descriptor is the Docker v2 manifest itself (as hangar export wrote before).
    legacy = tmp_path / "legacy.tar"
    with tarfile.open(archive) as src, tarfile.open(legacy, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "index.json":
                index = json.loads(data)
                entry = index["manifests"][0]
                entry.update(mediaType=mt.DOCKER_MANIFEST, digest=str(original.digest), size=len(original.raw))
                entry["annotations"] = {"org.opencontainers.image.ref.name": "old"}
                data = json.dumps(index).encode()
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    third = Store(load({"HANGAR_HOME": str(tmp_path / "third")}).models)
    assert import_model(third, legacy).name == ModelName.parse("legacy:old")
    assert third.get(ModelName.parse("legacy:old")).manifest.raw == original.raw
