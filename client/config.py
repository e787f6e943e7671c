"""Client settings: environment variables and ``~/.hangar/config.toml``.

=====================  =======================================================
``HANGAR_HOME``        Hangar's own files (keys, config): default ``~/.hangar``
``HANGAR_MODELS``      the model store: default ``$HANGAR_HOME/models``
``HANGAR_REGISTRY``    the host of names without one: default ``registry.ollama.ai``
``HANGAR_KEY``         the ed25519 key to sign in with: default ``$HANGAR_HOME/id_ed25519``
``HANGAR_SIGN_FOR``    registries (``host[:port]``, comma-separated) to sign token requests for
=====================  =======================================================

The key signs token requests only for registries ``hangar signin`` succeeded with (recorded in
``$HANGAR_HOME/signed-in.json``) and those listed in ``HANGAR_SIGN_FOR`` or marked ``sign = true``
below; every other registry is asked anonymously (see client.credentials).

``config.toml`` holds per-registry settings, keyed by ``host[:port]``::

    [registries."models.internal:5000"]
    insecure = true                 # plain http (as --insecure); false forces https even on localhost
    ca_bundle = "/etc/ssl/corp.pem" # trust a private CA for this registry
    mirror = "http://cache.lan:5000"  # try this registry first for pulls
    sign = true                     # sign token requests for it without 'hangar signin' (a key
                                    # bound some other way, such as Ollama's)

    [transfer]
    concurrency = 4                 # parallel parts per blob
    part_size = "64MiB"
    max_rate = "50MB"               # bytes per second, optional
    fsync = "deferred"              # when a pulled blob is flushed to disk, see below

``fsync``: ``"deferred"`` (the default) publishes a verified blob at once and lets the kernel write
it back, re-verifying it should the machine restart first (see client.store); ``true`` flushes
every blob before it becomes visible (slower on slow disks); ``false`` never flushes (a power cut
can leave a damaged blob under its digest).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from formats.names import DEFAULT_HOST
from formats.units import parse_size

DEFAULT_CONCURRENCY = 4
DEFAULT_PART_SIZE = 64 * 1024 * 1024

FsyncMode = Literal["before", "deferred", "off"]
_FSYNC_VALUES: dict[object, FsyncMode] = {
    True: "before", "true": "before", "before": "before",
    "deferred": "deferred",
    False: "off", "false": "off", "off": "off",
}  # fmt: skip


@dataclass(frozen=True)
class RegistrySettings:
    # None: plain http only for registries on this machine (localhost, 127.x), as Docker does.
    insecure: bool | None = None
    ca_bundle: str | None = None
    mirror: str | None = None


@dataclass(frozen=True)
class ClientSettings:
    home: Path
    models: Path
    key_path: Path
    default_host: str = DEFAULT_HOST
    registries: Mapping[str, RegistrySettings] = field(default_factory=dict)
    concurrency: int = DEFAULT_CONCURRENCY
    part_size: int = DEFAULT_PART_SIZE
    max_rate: int | None = None
    # When pulled blobs are flushed to disk (see the module's docstring).
    fsync: FsyncMode = "deferred"
    # Registries to sign token requests for besides those signed in to (client.credentials).
    sign_for: frozenset[str] = frozenset()

    def registry(self, host: str) -> RegistrySettings:
        return self.registries.get(host.lower(), RegistrySettings())


def load(env: Mapping[str, str] | None = None) -> ClientSettings:
    env = os.environ if env is None else env
    home = Path(env.get("HANGAR_HOME") or "~/.hangar").expanduser().absolute()
    models = Path(env.get("HANGAR_MODELS") or home / "models").expanduser().absolute()
    doc = _read_toml(home / "config.toml")
    registries = {
        host.lower(): RegistrySettings(
            insecure=bool(values["insecure"]) if "insecure" in values else None,
            ca_bundle=values.get("ca_bundle"),
            mirror=values.get("mirror"),
        )
        for host, values in doc.get("registries", {}).items()
    }
    sign_for = {host.lower() for host, values in doc.get("registries", {}).items() if values.get("sign") is True}
    sign_for |= {h.strip().lower() for h in (env.get("HANGAR_SIGN_FOR") or "").split(",") if h.strip()}
    transfer = doc.get("transfer", {})
    key = Path(env["HANGAR_KEY"]).expanduser() if env.get("HANGAR_KEY") else home / "id_ed25519"
    return ClientSettings(
        home=home,
        models=models,
        key_path=key,
        default_host=(env.get("HANGAR_REGISTRY") or DEFAULT_HOST).strip().strip("/"),
        registries=registries,
        concurrency=int(transfer.get("concurrency", DEFAULT_CONCURRENCY)),
        part_size=parse_size(str(transfer.get("part_size", DEFAULT_PART_SIZE))),
        max_rate=parse_size(str(transfer["max_rate"])) if transfer.get("max_rate") else None,
        fsync=_fsync_mode(transfer.get("fsync", "deferred"), home / "config.toml"),
        sign_for=frozenset(sign_for),
    )


def _fsync_mode(value: object, path: Path) -> FsyncMode:
    mode = _FSYNC_VALUES.get(value.lower() if isinstance(value, str) else value)
    if mode is None:
        raise ValueError(f'{path}: [transfer] fsync must be "deferred", true or false, not {value!r}')
    return mode


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: {e}") from None
