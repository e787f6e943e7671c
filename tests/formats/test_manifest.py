import json

import pytest

from formats import mediatypes as mt
from formats.digest import Digest
from formats.manifest import MAX_MANIFEST_BYTES, Descriptor, Manifest, ManifestError

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def doc(**over: object) -> dict:
    base = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": mt.OLLAMA_MODEL, "digest": D2, "size": 20, "from": "llama3:latest"}],
    }
    base.update(over)
    return base


def test_parse_ollama_manifest_keeps_extra_keys_and_bytes() -> None:
    raw = json.dumps(doc()).encode()
    m = Manifest.parse(raw, mt.DOCKER_MANIFEST)
    assert m.raw == raw and m.digest == Digest.of_bytes(raw)
    assert [str(d.digest) for d in m.blobs()] == [D1, D2]
    assert m.layers[0].parent == "llama3:latest"
    assert m.effective_artifact_type() == mt.DOCKER_CONFIG


def test_oci_artifact_with_subject() -> None:
    raw = json.dumps(
        doc(
            mediaType=mt.OCI_MANIFEST,
            artifactType="application/x.sig",
            subject={"mediaType": mt.OCI_MANIFEST, "digest": D1, "size": 5},
            annotations={"a": "b"},
        )
    ).encode()
    m = Manifest.parse(raw, None)
    assert m.subject is not None and str(m.subject.digest) == D1
    assert m.effective_artifact_type() == "application/x.sig" and m.annotations == {"a": "b"}


def test_media_type_from_content_type_or_shape() -> None:
    body = doc()
    del body["mediaType"]
    assert Manifest.parse(json.dumps(body).encode(), mt.OCI_MANIFEST).media_type == mt.OCI_MANIFEST
    assert Manifest.parse(json.dumps(body).encode(), None).media_type == mt.OCI_MANIFEST
    index = {"schemaVersion": 2, "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": D1, "size": 3}]}
    m = Manifest.parse(json.dumps(index).encode(), None)
    assert m.is_index and [str(d.digest) for d in m.manifests] == [D1] and list(m.blobs()) == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (json.dumps(doc(schemaVersion=1)).encode(), "schemaVersion"),
        (json.dumps(doc(mediaType="application/x-unknown")).encode(), "unsupported manifest media type"),
        (
            json.dumps(doc(config={"mediaType": "application/x", "digest": "sha256:zz", "size": 1})).encode(),
            "invalid digest",
        ),
        (json.dumps(doc(config={"mediaType": "application/x", "digest": D1, "size": -1})).encode(), "size"),
        (json.dumps(doc(config={"mediaType": "application/x", "digest": D1, "size": True})).encode(), "size"),
        (json.dumps(doc(config={"digest": D1, "size": 1})).encode(), "mediaType"),
        (json.dumps(doc(layers={})).encode(), "layers must be an array"),
        (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}).encode(), "config is required"),
        (json.dumps(doc(annotations={"a": 1})).encode(), "annotations"),
        (json.dumps(doc(artifactType="")).encode(), "artifactType"),
        (json.dumps(doc(artifactType="application/" + "x" * 300)).encode(), "artifactType"),
        (json.dumps(doc(config={"mediaType": "no-slash", "digest": D1, "size": 1})).encode(), "mediaType"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"schemaVersion": 2, "x": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_invalid_manifests(raw: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.parse(raw, None)


def test_content_type_must_agree_with_media_type() -> None:
    with pytest.raises(ManifestError, match="does not match"):
        Manifest.parse(json.dumps(doc()).encode(), mt.OCI_MANIFEST)


def test_size_limit() -> None:
    raw = json.dumps(doc(annotations={"pad": "x" * MAX_MANIFEST_BYTES})).encode()
    with pytest.raises(ManifestError, match="limit"):
        Manifest.parse(raw, None)


def test_build_is_compact_in_ollama_key_order() -> None:
    config = Descriptor(mt.DOCKER_CONFIG, Digest("1" * 64), 10)
    layer = Descriptor(mt.OLLAMA_MODEL, Digest("2" * 64), 20, {"from": "m:latest"})
    m = Manifest.build(config, [layer])
    assert m.raw.decode() == (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{{"mediaType":"{mt.DOCKER_CONFIG}","digest":"{D1}","size":10}},'
        f'"layers":[{{"mediaType":"{mt.OLLAMA_MODEL}","digest":"{D2}","size":20,"from":"m:latest"}}]}}'
    )
