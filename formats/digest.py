"""Content digests: ``sha256:<64 lowercase hex>`` in JSON and on the wire, ``sha256-<hex>`` in
file names. Only sha256 is supported, as in Ollama."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

ALGORITHM = "sha256"
_WIRE_RE = re.compile(r"sha256:([0-9a-f]{64})")
# Lenient form found in Ollama stores and APIs: either separator, either case.
_LENIENT_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")

READ_CHUNK = 4 * 1024 * 1024


class InvalidDigest(ValueError):
    """A string that is not a sha256 digest."""


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse the canonical wire form ``sha256:<lowercase hex>``."""
        m = _WIRE_RE.fullmatch(text)
        if m is None:
            raise InvalidDigest(f"invalid digest {text!r}: expected sha256:<64 lowercase hex>")
        return cls(m.group(1))

    @classmethod
    def parse_lenient(cls, text: str) -> Digest:
        """Accept ``sha256:`` or ``sha256-`` and upper-case hex (blob file names, Ollama APIs)."""
        m = _LENIENT_RE.fullmatch(text)
        if m is None:
            raise InvalidDigest(f"invalid digest {text!r}")
        return cls(m.group(1).lower())

    @classmethod
    def of_bytes(cls, data: bytes) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())

    @classmethod
    def of_file(cls, path: Path | str) -> Digest:
        with open(path, "rb") as f:
            return cls.of_stream(f)

    @classmethod
    def of_stream(cls, stream: io.BufferedIOBase) -> Digest:
        h = hashlib.sha256()
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        while n := stream.readinto(view):
            h.update(view[:n])
        return cls(h.hexdigest())

    def __str__(self) -> str:
        return f"{ALGORITHM}:{self.hex}"

    @property
    def filename(self) -> str:
        """The blob file name used by Ollama-layout stores: ``sha256-<hex>``."""
        return f"{ALGORITHM}-{self.hex}"

    @property
    def short(self) -> str:
        """The 12 hex characters Ollama shows in progress lines and model IDs."""
        return self.hex[:12]
