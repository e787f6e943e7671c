"""Wire formats of authentication, shared by the registry and the client (stdlib only).

**Keys.** A public key travels as the base64 (standard, padded) of its SSH wire encoding,
``string("ssh-ed25519") || string(32-byte key)``: the second field of an ``ssh-ed25519 AAAA…``
line. Its fingerprint is ``SHA256:`` + unpadded base64 of the sha256 of that encoding, as
``ssh-keygen -l`` prints it.

**Signed requests.** The header ``Authorization: <public key base64>:<signature base64>`` carries a
raw ed25519 signature (64 bytes, standard base64) over a signing string:

- token requests, exactly as Ollama signs them (§5.2 of the protocol spec):
  ``GET,<full URL as sent>,<base64 of the hex sha256 of the empty body>``, the query holding
  ``service``, ``scope``…, ``ts`` (unix seconds) and ``nonce``, keys sorted;
- Hangar's account API (``/hangar/v1/…``): ``<METHOD>,<path>?<query>,<base64 of the hex sha256 of
  the body>``, the query holding ``ts`` and ``nonce``. Like the token form but with the path
  instead of the full URL (so a reverse proxy does not change it) and the body covered.

The server accepts a ``ts`` within five minutes of its clock and each ``nonce`` once.

**Challenges.** ``WWW-Authenticate: Bearer realm="…",service="…",scope="…"``; scopes are
``repository:<namespace>/<model>:<action>[,<action>]`` with actions ``pull``, ``push``, ``delete``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass
from urllib.parse import quote

KEY_TYPE = b"ssh-ed25519"
CLOCK_SKEW = 300  # seconds a signed request's ts may differ from the server's clock
ACTIONS = ("pull", "push", "delete")


class InvalidKey(ValueError):
    pass


def encode_public_key(raw: bytes) -> str:
    """Base64 of the SSH wire encoding of a 32-byte ed25519 public key."""
    if len(raw) != 32:
        raise InvalidKey("an ed25519 public key has 32 bytes")
    wire = struct.pack(">I", len(KEY_TYPE)) + KEY_TYPE + struct.pack(">I", 32) + raw
    return base64.b64encode(wire).decode()


def decode_public_key(text: str) -> bytes:
    """The raw 32 bytes from base64 wire encoding, or from a whole ``ssh-ed25519 AAAA… comment`` line."""
    fields = text.strip().split()
    if len(fields) >= 2 and fields[0] == KEY_TYPE.decode():
        text = fields[1]
    elif len(fields) != 1:
        raise InvalidKey("expected an ssh-ed25519 public key")
    try:
        wire = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise InvalidKey("the public key is not base64") from None
    try:
        (n,) = struct.unpack(">I", wire[:4])
        kind = wire[4 : 4 + n]
        (m,) = struct.unpack(">I", wire[4 + n : 8 + n])
        raw = wire[8 + n : 8 + n + m]
    except struct.error:
        raise InvalidKey("the public key is truncated") from None
    if kind != KEY_TYPE or m != 32 or len(raw) != 32 or len(wire) != 8 + n + m:
        raise InvalidKey("only ssh-ed25519 keys are supported")
    return raw


def fingerprint(key_b64: str) -> str:
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def body_hash(body: bytes = b"") -> str:
    """Base64 of the ASCII hex sha256 of a body (for the empty body always ``ZTNi…NQ==``)."""
    return base64.b64encode(hashlib.sha256(body).hexdigest().encode()).decode()


def token_signing_string(url: str) -> bytes:
    return f"GET,{url},{body_hash()}".encode()


def api_signing_string(method: str, path_and_query: str, body: bytes) -> bytes:
    return f"{method.upper()},{path_and_query},{body_hash(body)}".encode()


def authorization(key_b64: str, signature: bytes) -> str:
    return f"{key_b64}:{base64.b64encode(signature).decode()}"


def parse_authorization(header: str) -> tuple[str, bytes] | None:
    """``(public key base64, signature)`` from a key-signed ``Authorization`` value, else None."""
    key, sep, sig = header.strip().partition(":")
    if not sep or " " in key or not key.startswith("AAAA"):
        return None
    try:
        signature = base64.b64decode(sig, validate=True)
    except ValueError:
        return None
    return (key, signature) if len(signature) == 64 else None


def go_query(params: list[tuple[str, str]]) -> str:
    """Encode a query as Go's ``url.Values.Encode``: keys sorted (stable), ``QueryEscape`` values."""

    def esc(s: str) -> str:
        return quote(s, safe="-_.~").replace("%20", "+")

    return "&".join(f"{esc(k)}={esc(v)}" for k, v in sorted(params, key=lambda kv: kv[0]))


def parse_challenge(header: str) -> dict[str, str] | None:
    """Parse ``Bearer realm="…",service="…",scope="…"`` the way Ollama's client does: each key's
    first occurrence, a quoted value up to a quote followed by a comma or the end."""
    if not header.startswith("Bearer "):
        return None
    rest = header[len("Bearer ") :]
    out = {}
    for key in ("realm", "service", "scope"):
        m = re.search(key + r'="(.*?)"(?:,|$)', rest)
        if m:
            out[key] = m.group(1)
    return out if "realm" in out else None


def challenge(realm: str, service: str, scope: str | None = None) -> str:
    value = f'Bearer realm="{realm}",service="{service}"'
    return value + (f',scope="{scope}"' if scope else "")


@dataclass(frozen=True)
class Scope:
    """``repository:<name>:<actions>``."""

    name: str
    actions: frozenset[str]
    type: str = "repository"

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        parts = text.split(":")
        if len(parts) != 3 or not parts[1]:
            return None
        actions = frozenset(a for a in parts[2].split(",") if a)
        if parts[2] == "*":
            actions = frozenset(ACTIONS)
        return cls(parts[1], actions, parts[0])

    def __str__(self) -> str:
        ordered = [a for a in ACTIONS if a in self.actions] + sorted(self.actions - set(ACTIONS))
        return f"{self.type}:{self.name}:{','.join(ordered)}"
