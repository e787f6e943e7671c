"""Clients we did not write: skopeo and the oras Python SDK."""

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import oras.client

from tests.helpers import digest_of, random_bytes, write_oci_layout

OLLAMA_MODEL = "application/vnd.ollama.image.model"


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("skopeo")
    assert exe, "skopeo is not installed: run scripts/test, which installs it"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, check=True)


def test_skopeo_copy_in_and_out_keeps_digests(registry, repo: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    weights = random_bytes(2_000_000)
    src = tmp_path / "src"
    layers = [(OLLAMA_MODEL, weights), ("application/vnd.ollama.image.template", b"{{ .Prompt }}")]
    manifest_digest = write_oci_layout(
        src, "v1", b'{"model_format":"gguf"}', layers, artifact_type="application/vnd.example.model"
    )
    target = f"docker://{registry.host}/{repo}:v1"
    skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{src}:v1", target)

    raw = httpx.get(f"{registry.url}/v2/{repo}/manifests/v1").content
    assert digest_of(raw) == manifest_digest
    inspected = skopeo("inspect", "--raw", "--tls-verify=false", target).stdout.encode()
    assert digest_of(inspected) == manifest_digest
    assert json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{registry.host}/{repo}").stdout)["Tags"] == [
        "v1"
    ]

    dst = tmp_path / "dst"
    skopeo("copy", "--src-tls-verify=false", "--preserve-digests", target, f"oci:{dst}:v1")
    index = json.loads((dst / "index.json").read_text())
    assert index["manifests"][0]["digest"] == manifest_digest
    for blob in (src / "blobs" / "sha256").iterdir():
        assert (dst / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()

    # Registry to registry (cross-repository) and delete.
    other = f"docker://{registry.host}/{repo.replace('/model', '/copy')}:v1"
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--preserve-digests", target, other)
    assert digest_of(skopeo("inspect", "--raw", "--tls-verify=false", other).stdout.encode()) == manifest_digest
    skopeo("delete", "--tls-verify=false", other)
    assert httpx.get(f"{registry.url}/v2/{repo.replace('/model', '/copy')}/manifests/v1").status_code == 404


def test_oras_push_and_pull(registry, repo: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = random_bytes(1_200_000)
    (tmp_path / "model.gguf").write_bytes(data)
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    target = f"{registry.host}/{repo}:v1"
    response = client.push(target=target, files=[str(tmp_path / "model.gguf")], disable_path_validation=True)
    assert response.status_code == 201
    assert client.get_tags(f"{registry.host}/{repo}") == ["v1"]
    manifest = client.get_manifest(target)
    assert manifest["layers"][0]["digest"] == digest_of(data)
    out = tmp_path / "out"
    files = client.pull(target=target, outdir=str(out))
    assert [Path(f).read_bytes() for f in files] == [data]
