"""Manifests: PUT/GET/HEAD/DELETE by tag and digest, validation, referrers."""

import json

import httpx
import pytest

from formats import mediatypes as mt
from tests.helpers import digest_of, error_codes, ollama_manifest, push_blob, push_model, random_bytes


def test_ollama_manifest_round_trip_byte_for_byte(client: httpx.Client, repo: str) -> None:
    raw, _ = push_model(client, repo, "v1")
    for ref in ("v1", digest_of(raw)):
        r = client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": mt.DOCKER_MANIFEST})
        assert r.status_code == 200
        assert r.content == raw
        assert r.headers["Content-Type"] == mt.DOCKER_MANIFEST
        assert r.headers["Docker-Content-Digest"] == digest_of(raw)
        h = client.head(f"/v2/{repo}/manifests/{ref}")
        assert h.status_code == 200 and h.content == b""
        assert int(h.headers["Content-Length"]) == len(raw)
        assert h.headers["Docker-Content-Digest"] == digest_of(raw)


def test_put_response_headers(client: httpx.Client, repo: str) -> None:
    config = push_blob(client, repo, b"{}")
    raw = ollama_manifest(config, [])
    r = client.put(f"/v2/{repo}/manifests/latest", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest_of(raw)
    assert r.headers["Location"].endswith(f"/v2/{repo}/manifests/{digest_of(raw)}")


def test_whitespace_and_key_order_are_preserved(client: httpx.Client, repo: str) -> None:
    config = push_blob(client, repo, b"{}")
    layer = push_blob(client, repo, b"weights")
    raw = (
        f'{{\n  "schemaVersion": 2,\n  "mediaType": "{mt.DOCKER_MANIFEST}",\n'
        f'  "config": {{"size": {config["size"]}, "digest": "{config["digest"]}",'
        f' "mediaType": "{mt.DOCKER_CONFIG}"}},\n'
        f'  "layers": [{{"mediaType": "{mt.OLLAMA_MODEL}", "digest": "{layer["digest"]}", "size": {layer["size"]},'
        ' "from": "llama3:latest"}]\n}\n'
    ).encode()
    assert (
        client.put(f"/v2/{repo}/manifests/x", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST}).status_code
        == 201
    )
    assert client.get(f"/v2/{repo}/manifests/x").content == raw


def test_put_by_digest(client: httpx.Client, repo: str) -> None:
    config = push_blob(client, repo, b"{}")
    raw = ollama_manifest(config, [])
    r = client.put(f"/v2/{repo}/manifests/{digest_of(raw)}", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
    assert r.status_code == 201
    assert client.get(f"/v2/{repo}/manifests/{digest_of(raw)}").content == raw
    r = client.put(f"/v2/{repo}/manifests/{digest_of(b'x')}", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


def test_missing_blobs_are_refused(client: httpx.Client, repo: str) -> None:
    config = push_blob(client, repo, b"{}")
    missing = {"digest": digest_of(b"absent"), "size": 6}
    raw = ollama_manifest(config, [{"mediaType": mt.OLLAMA_MODEL, **missing}])
    r = client.put(f"/v2/{repo}/manifests/latest", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
    assert r.status_code == 400
    assert error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]
    assert r.json()["errors"][0]["detail"]["digests"] == [missing["digest"]]
    assert error_codes(client.get(f"/v2/{repo}/manifests/latest")) == ["MANIFEST_UNKNOWN"]


def test_blob_of_another_repository_does_not_count(client: httpx.Client, repo: str) -> None:
    other = repo.replace("/model", "/other")
    layer = push_blob(client, other, b"elsewhere")
    config = push_blob(client, repo, b"{}")
    raw = ollama_manifest(config, [{"mediaType": mt.OLLAMA_MODEL, **layer}])
    r = client.put(f"/v2/{repo}/manifests/latest", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
    assert error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]


def test_wrong_descriptor_size_is_refused(client: httpx.Client, repo: str) -> None:
    config = push_blob(client, repo, b"{}")
    raw = ollama_manifest({**config, "size": 99}, [])
    r = client.put(f"/v2/{repo}/manifests/latest", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
    assert r.status_code == 400 and error_codes(r) == ["MANIFEST_INVALID"]


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"{not json", mt.DOCKER_MANIFEST),
        (b'{"schemaVersion": 1}', mt.DOCKER_MANIFEST),
        (b'{"schemaVersion": 2, "mediaType": "text/plain", "config": {}}', "text/plain"),
        (b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:1", "size": 1}}', mt.OCI_MANIFEST),
        (b"\xff\xfe", mt.DOCKER_MANIFEST),
        (b"[" * 50_000 + b"]" * 50_000, mt.DOCKER_MANIFEST),
        (
            b'{"schemaVersion": 2, "artifactType": "application/' + b"x" * 300 + b'", "config": '
            b'{"mediaType": "application/x", "digest": "sha256:' + b"0" * 64 + b'", "size": 1}}',
            mt.OCI_MANIFEST,
        ),
    ],
)
def test_invalid_manifests(client: httpx.Client, repo: str, body: bytes, ctype: str) -> None:
    r = client.put(f"/v2/{repo}/manifests/latest", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400 and error_codes(r) == ["MANIFEST_INVALID"]


def test_manifest_size_limit(client: httpx.Client, repo: str) -> None:
    body = b'{"schemaVersion": 2, "annotations": {"pad": "' + b"x" * (4 * 1024 * 1024) + b'"}}'
    r = client.put(f"/v2/{repo}/manifests/big", content=body, headers={"Content-Type": mt.OCI_MANIFEST})
    assert r.status_code == 413 and error_codes(r) == ["SIZE_INVALID"]

    def chunked():  # type: ignore[no-untyped-def]  (no Content-Length: the limit applies while reading)
        yield body

    r = client.put(f"/v2/{repo}/manifests/big", content=chunked(), headers={"Content-Type": mt.OCI_MANIFEST})
    assert r.status_code == 413


def test_retag_and_delete(client: httpx.Client, repo: str) -> None:
    raw1, _ = push_model(client, repo, "latest")
    raw2, _ = push_model(client, repo, "latest")
    assert client.get(f"/v2/{repo}/manifests/latest").content == raw2
    assert client.get(f"/v2/{repo}/manifests/{digest_of(raw1)}").content == raw1  # still there by digest
    client.put(f"/v2/{repo}/manifests/stable", content=raw2, headers={"Content-Type": mt.DOCKER_MANIFEST})
    # Deleting a tag leaves the manifest and other tags.
    assert client.delete(f"/v2/{repo}/manifests/latest").status_code == 202
    assert client.get(f"/v2/{repo}/manifests/latest").status_code == 404
    assert client.get(f"/v2/{repo}/manifests/stable").content == raw2
    # Deleting by digest removes the manifest and every tag on it.
    assert client.delete(f"/v2/{repo}/manifests/{digest_of(raw2)}").status_code == 202
    for ref in ("stable", digest_of(raw2)):
        r = client.get(f"/v2/{repo}/manifests/{ref}")
        assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    r = client.delete(f"/v2/{repo}/manifests/{digest_of(raw2)}")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    assert error_codes(client.delete("/v2/nobody/here/manifests/latest")) == ["NAME_UNKNOWN"]


def test_repository_names_are_case_insensitive(client: httpx.Client, repo: str) -> None:
    raw, _ = push_model(client, repo, "latest")
    assert client.get(f"/v2/{repo.upper()}/manifests/latest").content == raw


def _oci_artifact(
    client: httpx.Client, repo: str, artifact_type: str, subject: dict | None, annotations: dict | None = None
) -> bytes:
    layer = push_blob(client, repo, random_bytes(64))
    empty = push_blob(client, repo, b"{}")
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": mt.OCI_EMPTY, **empty},
        "layers": [{"mediaType": "application/octet-stream", **layer}],
    }
    if subject:
        doc["subject"] = subject
    if annotations:
        doc["annotations"] = annotations
    return json.dumps(doc).encode()


def test_oci_artifacts_and_referrers(client: httpx.Client, repo: str) -> None:
    raw, _ = push_model(client, repo, "latest")
    subject = {"mediaType": mt.DOCKER_MANIFEST, "digest": digest_of(raw), "size": len(raw)}
    sig = _oci_artifact(client, repo, "application/vnd.example.signature", subject, {"org.example.by": "ci"})
    sbom = _oci_artifact(client, repo, "application/vnd.example.sbom", subject)
    for body in (sig, sbom):
        r = client.put(
            f"/v2/{repo}/manifests/{digest_of(body)}", content=body, headers={"Content-Type": mt.OCI_MANIFEST}
        )
        assert r.status_code == 201, r.text
        assert r.headers["OCI-Subject"] == digest_of(raw)

    r = client.get(f"/v2/{repo}/referrers/{digest_of(raw)}")
    assert r.status_code == 200 and r.headers["Content-Type"] == mt.OCI_INDEX
    index = r.json()
    assert index["mediaType"] == mt.OCI_INDEX and index["schemaVersion"] == 2
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert set(by_digest) == {digest_of(sig), digest_of(sbom)}
    assert by_digest[digest_of(sig)] == {
        "mediaType": mt.OCI_MANIFEST,
        "digest": digest_of(sig),
        "size": len(sig),
        "artifactType": "application/vnd.example.signature",
        "annotations": {"org.example.by": "ci"},
    }

    r = client.get(f"/v2/{repo}/referrers/{digest_of(raw)}", params={"artifactType": "application/vnd.example.sbom"})
    assert [m["digest"] for m in r.json()["manifests"]] == [digest_of(sbom)]
    assert r.headers["OCI-Filters-Applied"] == "artifactType"

    # Unknown subjects give an empty index, never a 404; a bad digest is a 400.
    r = client.get(f"/v2/{repo}/referrers/{digest_of(b'nothing')}")
    assert r.status_code == 200 and r.json()["manifests"] == []
    assert client.get(f"/v2/{repo}/referrers/sha256:zz").status_code == 400


def test_subject_need_not_exist_yet(client: httpx.Client, repo: str) -> None:
    ghost = {"mediaType": mt.OCI_MANIFEST, "digest": digest_of(b"later"), "size": 5}
    body = _oci_artifact(client, repo, "application/vnd.example.signature", ghost)
    r = client.put(f"/v2/{repo}/manifests/sig", content=body, headers={"Content-Type": mt.OCI_MANIFEST})
    assert r.status_code == 201


def test_image_index(client: httpx.Client, repo: str) -> None:
    raw, _ = push_model(client, repo, "amd64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [{"mediaType": mt.DOCKER_MANIFEST, "digest": digest_of(raw), "size": len(raw)}],
        }
    ).encode()
    r = client.put(f"/v2/{repo}/manifests/multi", content=index, headers={"Content-Type": mt.OCI_INDEX})
    assert r.status_code == 201
    got = client.get(f"/v2/{repo}/manifests/multi")
    assert got.content == index and got.headers["Content-Type"] == mt.OCI_INDEX
    dangling = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": digest_of(b"x"), "size": 1}],
        }
    ).encode()
    r = client.put(f"/v2/{repo}/manifests/dangling", content=dangling, headers={"Content-Type": mt.OCI_INDEX})
    assert r.status_code == 400 and error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]
