"""The registry against a client that speaks exactly as Ollama's does (tests/ollama_wire.py)."""

from pathlib import Path

import httpx

from formats import mediatypes as mt
from tests.helpers import digest_of, ollama_manifest, random_bytes
from tests.ollama_wire import OllamaWireClient


def model(size: int) -> tuple[bytes, dict[str, bytes]]:
    weights = random_bytes(size)
    template = b"{{ .System }}{{ .Prompt }}"
    config = (
        b'{"model_format":"gguf","model_family":"llama","file_type":"Q4_K_M","architecture":"amd64","os":"linux"}\n'
    )
    blobs = {digest_of(b): b for b in (weights, template, config)}
    manifest = ollama_manifest(
        {"digest": digest_of(config), "size": len(config)},
        [
            {"mediaType": mt.OLLAMA_MODEL, "digest": digest_of(weights), "size": len(weights)},
            {"mediaType": mt.OLLAMA_TEMPLATE, "digest": digest_of(template), "size": len(template)},
        ],
    )
    return manifest, blobs


def test_ollama_style_push_then_pull(registry, repo: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest, blobs = model(3_000_000)
    # 1 MB parts so the 3 MB model layer goes up in 3 PATCHes and comes down in 3 Range GETs.
    pusher = OllamaWireClient(registry.url, min_part=1_000_000)
    pusher.push(repo, "latest", manifest, blobs)
    patches = [(m, u, h) for m, u, h in pusher.requests if m == "PATCH"]
    assert [h["content-range"] for _, _, h in patches][:3] == ["0-999999", "1000000-1999999", "2000000-2999999"]
    finals = [u for m, u, _ in pusher.requests if m == "PUT" and "/blobs/uploads/" in u]
    assert len(finals) == 3
    assert all(u.split("?")[1].startswith("digest=sha256%3A") and "&etag=" in u for u in finals)

    puller = OllamaWireClient(registry.url, min_part=1_000_000)
    got_manifest, files = puller.pull(repo, "latest", tmp_path)
    assert got_manifest == manifest
    assert {d: p.read_bytes() for d, p in files.items()} == blobs
    part_gets = [h for m, u, h in puller.requests if m == "GET" and "signature=" in u]
    assert len(part_gets) >= 3
    assert all("authorization" not in h for h in part_gets)
    assert {h["range"] for h in part_gets} >= {"bytes=0-999999", "bytes=2000000-2999999"}


def test_ollama_style_push_mounts_inherited_layers(registry, repo: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest, blobs = model(50_000)
    OllamaWireClient(registry.url).push(repo, "base", manifest, blobs)

    import json

    doc = json.loads(manifest)
    doc["layers"][0]["from"] = f"{repo}:base"
    derived = json.dumps(doc, separators=(",", ":")).encode()
    target = repo.replace("/model", "/derived")
    client = OllamaWireClient(registry.url)
    client.push(target, "latest", derived, blobs)
    posts = [u for m, u, _ in client.requests if m == "POST"]
    mounted = [u for u in posts if "mount=" in u]
    assert len(mounted) == 1 and f"from={repo.replace('/', '%2F')}" in mounted[0]
    patched = {u for m, u, _ in client.requests if m == "PATCH"}
    assert len(patched) == 2  # template and config; the model layer was mounted
    assert httpx.get(f"{registry.url}/v2/{target}/manifests/latest").content == derived
