import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from formats.auth import (
    InvalidKey,
    Scope,
    authorization,
    body_hash,
    challenge,
    decode_public_key,
    encode_public_key,
    fingerprint,
    go_query,
    parse_authorization,
    parse_challenge,
    token_signing_string,
)


def test_public_key_encoding_matches_openssh() -> None:
    key = Ed25519PrivateKey.generate()
    openssh_line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    b64 = encode_public_key(raw)
    assert openssh_line.decode() == f"ssh-ed25519 {b64}"
    assert decode_public_key(b64) == raw
    assert decode_public_key(f"ssh-ed25519 {b64} alice@laptop\n") == raw
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(b64)).digest()).decode().rstrip("=")
    assert fingerprint(b64) == f"SHA256:{digest}"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not base64!",
        "AAAA",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ",
        base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x05abcde").decode(),
    ],
)
def test_bad_public_keys(bad: str) -> None:
    with pytest.raises(InvalidKey):
        decode_public_key(bad)


def test_empty_body_hash_is_ollamas_constant() -> None:
    assert body_hash() == "ZTNiMGM0NDI5OGZjMWMxNDlhZmJmNGM4OTk2ZmI5MjQyN2FlNDFlNDY0OWI5MzRjYTQ5NTk5MWI3ODUyYjg1NQ=="
    assert token_signing_string("https://r/token?a=b") == f"GET,https://r/token?a=b,{body_hash()}".encode()


def test_authorization_header_round_trip() -> None:
    sig = bytes(range(64))
    value = authorization("AAAAC3NzaC1lZDI1NTE5AAAAIA", sig)
    assert value.startswith("AAAAC3NzaC1lZDI1NTE5AAAAIA:") and " " not in value
    assert parse_authorization(value) == ("AAAAC3NzaC1lZDI1NTE5AAAAIA", sig)
    for bad in ["Bearer abc", "AAAA:notbase64!", "AAAA:" + base64.b64encode(b"short").decode(), "nokey"]:
        assert parse_authorization(bad) is None


def test_go_query_sorts_and_escapes() -> None:
    query = go_query([("ts", "1"), ("scope", "repository:a/b:pull,push"), ("service", "h:5000"), ("nonce", "x y")])
    assert query == "nonce=x+y&scope=repository%3Aa%2Fb%3Apull%2Cpush&service=h%3A5000&ts=1"


def test_challenge_round_trip_and_naive_parsing() -> None:
    header = challenge("http://127.0.0.1:5000/token", "127.0.0.1:5000", "repository:a/b:pull,push")
    assert (
        header == 'Bearer realm="http://127.0.0.1:5000/token",service="127.0.0.1:5000",scope="repository:a/b:pull,push"'
    )
    assert parse_challenge(header) == {
        "realm": "http://127.0.0.1:5000/token", "service": "127.0.0.1:5000", "scope": "repository:a/b:pull,push",
    }  # fmt: skip
    assert parse_challenge('Basic realm="x"') is None
    assert parse_challenge('Bearer service="s"') is None


def test_scopes() -> None:
    s = Scope.parse("repository:alice/model:push,pull")
    assert s is not None and s.name == "alice/model" and s.actions == {"pull", "push"}
    assert str(s) == "repository:alice/model:pull,push"
    assert Scope.parse("repository:a/b:*") == Scope("a/b", frozenset({"pull", "push", "delete"}))
    assert Scope.parse("garbage") is None and Scope.parse("repository::pull") is None
