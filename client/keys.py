"""The ed25519 key that identifies this machine to registries.

Stored as Ollama stores its key: the private key in OpenSSH format (unencrypted, mode 0600) and
``<key>.pub`` with one ``ssh-ed25519 AAAA…`` line. The default is ``~/.hangar/id_ed25519``;
``--key`` or ``HANGAR_KEY`` may name another, such as ``~/.ollama/id_ed25519``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.errors import KeyFileError
from formats.auth import authorization, encode_public_key, fingerprint


@dataclass(frozen=True)
class Identity:
    path: Path
    private_key: Ed25519PrivateKey

    @property
    def public_key_b64(self) -> str:
        raw = self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return encode_public_key(raw)

    @property
    def public_line(self) -> str:
        return f"ssh-ed25519 {self.public_key_b64}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key_b64)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def authorization(self, message: bytes) -> str:
        """The ``Authorization`` value for a signed request: ``<public key>:<signature>``."""
        return authorization(self.public_key_b64, self.sign(message))


def default_key_path(home: Path, env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env["HANGAR_KEY"]).expanduser() if env.get("HANGAR_KEY") else home / "id_ed25519"


def load(path: Path) -> Identity:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"no key at {path}: run 'hangar signin' to create one") from None
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not an unencrypted OpenSSH private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an ed25519 key")
    return Identity(path, key)


def load_or_create(path: Path) -> tuple[Identity, bool]:
    """The key at ``path``, creating it (and its .pub) if missing; True when it was created."""
    if path.exists():
        return load(path), False
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    identity = Identity(path, key)
    pub = path.with_name(path.name + ".pub")
    pub.write_text(identity.public_line + "\n")
    os.chmod(pub, 0o644)
    return identity, True
