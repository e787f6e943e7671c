"""Registry settings: built once from command-line flags over ``HANGAR_REGISTRY_*`` environment
variables over defaults. Nothing reads the environment at import time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from formats.units import parse_duration
from registry.mirror.config import MirrorConfigError, Upstream, load_credentials, parse_cache_size, parse_upstreams
from registry.origins import check_allowed_hosts, check_trusted_proxies

ENV_PREFIX = "HANGAR_REGISTRY_"
DEFAULT_LISTEN = "127.0.0.1:5000"


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path("~/.hangar/registry")
    # Empty means SQLite inside data_dir.
    database_url: str = ""
    # Where blobs live: file:///PATH or s3://BUCKET[/PREFIX] (registry.storage.open_store).
    # Empty means the folder DATA_DIR/blobs (uploads in DATA_DIR/uploads), as it always was.
    storage: str = ""
    # "on": a blob GET answers 307 to the object store's own presigned URL when the store has
    # one; "off": the registry streams the bytes itself (an object store clients cannot reach).
    redirect: str = "on"
    # "on": GET /metrics answers Prometheus text, unauthenticated (registry.metrics); "off": no /metrics.
    metrics: str = "on"
    # The scheme://host[:port] clients reach us at: the canonical origin, named in challenges and
    # Location headers, and the one signed requests must be bound to (registry.origins). Empty:
    # the listen address and loopback names.
    public_url: str = ""
    # Further names this registry answers to, comma-separated: host[:port] or scheme://host[:port].
    allowed_hosts: str = ""
    # Addresses (IPs or CIDRs, comma-separated; "*" for any) whose X-Forwarded-Proto and
    # X-Forwarded-For are believed. Empty: nobody's, so a client cannot pretend to have used https.
    trusted_proxies: str = ""
    # Serving HTTPS directly (uvicorn terminates TLS): loopback origins are then https.
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    workers: int = 1
    # Upload sessions untouched for this long are purged, with their data.
    upload_max_age: float = 24 * 3600.0
    # Lifetime of the self-authorising blob URLs handed out in Location headers. Ollama resolves
    # one per blob and downloads all its parts from it, so this must cover one blob's download;
    # each use also re-checks that the URL's holder may still read the repository.
    signed_url_ttl: int = 30 * 60
    # "required": tokens for everything but anonymous pulls of public repositories;
    # "off": no authentication at all (a trusted network, a cache): anyone may push anywhere.
    auth: str = "required"
    # Who may create an account with `hangar signin`: "open", "invite" (a code from an admin) or "closed".
    signup: str = "invite"
    # Lifetime of the bearer tokens the token endpoint issues, in seconds.
    token_ttl: int = 300
    # Requests a minute per client address to /token and /hangar/v1 (bursts of as many; each
    # worker counts on its own); 0 turns the limit off.
    rate_limit: int = 600
    log_level: str = "info"
    # The pull-through mirror (registry.mirror): upstream registries, comma-separated, each URL
    # (every namespace) or NAMESPACE=URL; empty: no mirror.
    upstream: str = ""
    # A TOML file with the credentials the mirror presents to its upstreams (registry.mirror.config).
    upstream_credentials: str = ""
    # How long a cached tag is served before the upstream is asked whether it moved.
    upstream_check_interval: float = 300.0
    # The cache's size limit ("500GB"); least recently used cached models go first. Empty: none.
    cache_max_size: str = ""

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'registry.db'}"

    def mirror_upstreams(self) -> list[Upstream]:
        """The ``--upstream`` registries with their credentials (raises MirrorConfigError)."""
        upstreams = parse_upstreams(self.upstream)
        credentials = Path(self.upstream_credentials).expanduser() if self.upstream_credentials else None
        if credentials is not None and not upstreams:
            raise MirrorConfigError("--upstream-credentials without --upstream")
        return load_credentials(credentials, upstreams)

    @property
    def storage_location(self) -> str | Path:
        """What ``registry.storage.open_store`` takes: the URL, or the data directory."""
        return self.storage or self.resolved_data_dir

    def validate(self) -> Settings:
        if ":" not in self.listen:
            raise ValueError(f"--listen must be HOST:PORT, got {self.listen!r}")
        try:
            port = self.port
        except ValueError:
            raise ValueError(f"--listen port must be a number, got {self.listen!r}") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"--listen port out of range: {port}")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("--public-url must start with http:// or https://")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together")
        check_allowed_hosts(self.allowed_hosts)
        check_trusted_proxies(self.trusted_proxies)
        if self.upload_max_age <= 0 or self.signed_url_ttl <= 0 or self.token_ttl <= 0:
            raise ValueError("ages and lifetimes must be positive")
        if self.rate_limit < 0:
            raise ValueError("--rate-limit must be 0 (off) or a positive number of requests a minute")
        if self.auth not in ("required", "off"):
            raise ValueError(f"--auth must be 'required' or 'off', got {self.auth!r}")
        if self.storage and not self.storage.startswith(("file://", "s3://", "memory://")):
            raise ValueError(f"--storage must be file:///PATH or s3://BUCKET[/PREFIX], got {self.storage!r}")
        if self.redirect not in ("on", "off"):
            raise ValueError(f"--redirect must be 'on' or 'off', got {self.redirect!r}")
        if self.metrics not in ("on", "off"):
            raise ValueError(f"--metrics must be 'on' or 'off', got {self.metrics!r}")
        self.mirror_upstreams()
        parse_cache_size(self.cache_max_size)
        if self.upstream_check_interval < 0:
            raise ValueError("--upstream-check-interval must not be negative")
        if self.signup not in ("open", "invite", "closed"):
            raise ValueError(f"--signup must be 'open', 'invite' or 'closed', got {self.signup!r}")
        return replace(self, public_url=self.public_url.rstrip("/"))

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings (for worker processes)."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


def from_env(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from ``HANGAR_REGISTRY_*`` variables, then non-None ``overrides`` on top."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is None or raw == "":
            continue
        values[f.name] = _convert(f.name, raw)
    for name, value in overrides.items():
        if value is not None:
            values[name] = _convert(name, value) if isinstance(value, str) else value
    return Settings(**values).validate()  # type: ignore[arg-type]


def _convert(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return parse_duration(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError as e:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: {e}") from None
    return raw
