"""Small builders shared by the registry tests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx

from formats import mediatypes as mt

EMPTY_SHA256 = "sha256:" + hashlib.sha256(b"").hexdigest()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def push_blob(client: httpx.Client, repo: str, data: bytes) -> dict[str, Any]:
    """Monolithic upload; returns the descriptor fields (digest, size)."""
    digest = digest_of(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    return {"digest": digest, "size": len(data)}


def ollama_manifest(config: dict[str, Any], layers: list[dict[str, Any]]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, **config},
        "layers": layers,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def push_model(
    client: httpx.Client, repo: str, tag: str = "latest", model: bytes | None = None
) -> tuple[bytes, list[dict[str, Any]]]:
    """An Ollama-shaped model (config, model layer, template layer) pushed under ``tag``."""
    config = push_blob(
        client, repo, b'{"model_format":"gguf","model_family":"llama","architecture":"amd64","os":"linux"}\n'
    )
    weights = push_blob(client, repo, model if model is not None else random_bytes(300_000))
    template = push_blob(client, repo, b"{{ .Prompt }}")
    layers = [
        {"mediaType": mt.OLLAMA_MODEL, **weights},
        {"mediaType": mt.OLLAMA_TEMPLATE, **template},
    ]
    raw = ollama_manifest(config, layers)
    r = client.put(f"/v2/{repo}/manifests/{tag}", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
    assert r.status_code == 201, r.text
    return raw, [config, *layers]


def error_codes(response: httpx.Response) -> list[str]:
    return [e["code"] for e in response.json()["errors"]]


def write_oci_layout(
    root: Path, tag: str, config: bytes, layers: list[tuple[str, bytes]], artifact_type: str | None = None
) -> str:
    """A minimal OCI image layout holding one manifest; returns the manifest digest."""
    (root / "blobs" / "sha256").mkdir(parents=True)

    def put(data: bytes) -> dict[str, Any]:
        digest = digest_of(data)
        (root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, **put(config)},
        "layers": [{"mediaType": media_type, **put(data)} for media_type, data in layers],
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    manifest = put(json.dumps(doc).encode())
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": mt.OCI_MANIFEST, **manifest, "annotations": {"org.opencontainers.image.ref.name": tag}}
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return str(manifest["digest"])
