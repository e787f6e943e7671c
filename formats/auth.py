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
- Hangar's account API (``/hangar/v1/…``), scheme v2: the request carries the header
  ``Hangar-Signature-Version: 2`` and signs
  ``HANGAR2,<METHOD>,<origin><path>?<query>,<base64 of the hex sha256 of the body>``, the query
  holding ``ts`` and ``nonce``, ``<origin>`` the registry's ``scheme://host[:port]`` as
  ``normalize_origin`` writes it (lower case, no default port). The origin binds the signature to
  one registry: a request signed for registry B is refused by registry A, which verifies it only
  against its own origins (``registry.origins``). The body is covered. Scheme v1 (no marker, no
  origin: ``<METHOD>,<path>?<query>,<hash>``) could be replayed between registries and is refused
  with a message asking for a newer client.

The server accepts a ``ts`` within five minutes of its clock and each ``nonce`` once (nonces are
kept per registry, in its database). A token request's URL names the registry too, and the
server verifies it only against its own origins, never against the request's ``Host``.

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
# The account API's signing scheme: the header that declares it and the signing string's prefix.
API_SIGNATURE_HEADER = "Hangar-Signature-Version"
API_SIGNATURE_VERSION = "2"
API_SIGNATURE_PREFIX = "HANGAR2"
DEFAULT_PORTS = {"http": 80, "https": 443}


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


def api_signing_string(method: str, origin: str, path_and_query: str, body: bytes) -> bytes:
    """Scheme v2 of the account API: the registry's origin is signed with the path, so a signature
    made for one registry is worthless at another."""
    url = normalize_origin(origin) + path_and_query
    return f"{API_SIGNATURE_PREFIX},{method.upper()},{url},{body_hash(body)}".encode()


def normalize_origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL or origin: lower case, IPv6 in brackets, the scheme's
    default port left out, path and query dropped. Raises ValueError for what is not http(s)."""
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError(f"not an http(s) URL: {url!r}")
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in netloc:
        raise ValueError(f"an origin has no user name: {url!r}")
    host, port = split_host_port(netloc)
    if not host:
        raise ValueError(f"no host in {url!r}")
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def split_host_port(netloc: str) -> tuple[str, int | None]:
    """``(host, port)`` from ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; the host lower-cased,
    an IPv6 address kept in brackets. Raises ValueError for a port that is not a number."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {netloc!r}")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after {host!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = netloc.partition(":")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid port in {netloc!r}")
    return host, int(port_text)


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
