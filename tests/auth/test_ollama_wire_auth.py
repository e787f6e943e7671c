"""An authenticated push and pull by a client that follows §4–§5 of the protocol spec byte for byte."""

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.ollama_wire import OllamaWireClient, WireError
from tests.people import audit_rows
from tests.registry.test_ollama_wire import model


def test_ollama_client_pushes_and_pulls_with_its_key(people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    repo = f"{alice.name}/wire"
    manifest, blobs = model(2_500_000)

    pusher = OllamaWireClient(alice.registry.url, min_part=1_000_000, key=alice.identity.private_key)
    pusher.push(repo, "latest", manifest, blobs)
    tokens = [(u, h) for m, u, h in pusher.requests if "/token?" in u]
    assert tokens, "the registry must challenge an unauthenticated push"
    url, headers = tokens[0]
    query = url.split("?", 1)[1]
    keys = [kv.split("=")[0] for kv in query.split("&")]
    assert keys == sorted(keys) and {"service", "scope", "ts", "nonce"} <= set(keys)
    assert headers["authorization"].startswith(alice.identity.public_key_b64 + ":")
    assert audit_rows(alice.registry, action="push", actor=alice.name, target=f"{repo}:latest")

    # Make it private: the anonymous-looking first GET now gets a challenge, and the key answers it.
    alice.account.set_visibility(repo, "private")
    puller = OllamaWireClient(alice.registry.url, min_part=1_000_000, key=alice.identity.private_key)
    got, files = puller.pull(repo, "latest", tmp_path)
    assert got == manifest and {d: p.read_bytes() for d, p in files.items()} == blobs
    parts = [h for m, u, h in puller.requests if "signature=" in u]
    assert parts and all("authorization" not in h for h in parts)

    # Someone else's key gets nothing.
    stranger = OllamaWireClient(alice.registry.url, key=Ed25519PrivateKey.generate())
    try:
        stranger.pull(repo, "latest", tmp_path / "x")
    except WireError as e:
        assert "401" in str(e) and "unknown key" in str(e)
    else:
        raise AssertionError("an unknown key pulled a private model")
