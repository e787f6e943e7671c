"""The mirror's settings: which upstream registry serves which namespace (``--upstream``), the
credentials the mirror presents to each (a TOML file, never logged) and the cache's size limit."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from formats.auth import normalize_origin
from formats.names import repository_namespace
from formats.units import parse_size

_NAMESPACE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class MirrorConfigError(ValueError):
    """A bad ``--upstream``, credentials file or ``--cache-max-size``; the message says which."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the mirror presents to one upstream. Only one of the three kinds is set; the repr
    hides the secrets so that a log line or a traceback never carries them."""

    username: str = ""
    password: str = ""
    token: str = ""  # a bearer token sent as is (a registry's personal access token)
    key_path: str = ""  # an ssh-ed25519 private key: Ollama's token dance (protocol spec §5)

    def __repr__(self) -> str:
        kind = "key" if self.key_path else "basic" if self.username else "token" if self.token else "anonymous"
        return f"Credentials({kind})"

    @property
    def kind(self) -> str:
        return "key" if self.key_path else "basic" if self.username else "token" if self.token else "anonymous"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream registry: ``url`` (scheme://host[:port], no path) and the namespace it serves
    (None: every namespace no other upstream names)."""

    url: str
    namespace: str | None = None
    credentials: Credentials = Credentials()

    def __str__(self) -> str:
        return f"{self.namespace}={self.url}" if self.namespace else self.url


def parse_upstream(spec: str) -> Upstream:
    """``URL`` or ``NAMESPACE=URL``."""
    spec = spec.strip()
    namespace: str | None = None
    if "=" in spec and not spec.split("=", 1)[0].startswith(("http://", "https://")):
        namespace, spec = (part.strip() for part in spec.split("=", 1))
        namespace = namespace.lower()
        if not namespace or not set(namespace) <= _NAMESPACE_CHARS:
            raise MirrorConfigError(f"--upstream: invalid namespace {namespace!r} (expected NAMESPACE=URL)")
    try:
        url = normalize_origin(spec)
    except ValueError as e:
        raise MirrorConfigError(f"--upstream: {e}; expected URL or NAMESPACE=URL") from None
    rest = spec.split("://", 1)[1].partition("/")[2]
    if rest.strip("/"):
        raise MirrorConfigError(f"--upstream: {spec!r} has a path; name the registry's root (scheme://host[:port])")
    return Upstream(url, namespace)


def parse_upstreams(text: str) -> list[Upstream]:
    """The comma-separated ``--upstream`` values (the flag is repeatable; the environment
    variable holds them joined by commas). At most one catch-all and one upstream per namespace."""
    upstreams = [parse_upstream(part) for part in text.split(",") if part.strip()]
    seen: set[str | None] = set()
    for upstream in upstreams:
        if upstream.namespace in seen:
            which = f"namespace {upstream.namespace!r}" if upstream.namespace else "every namespace (no NAMESPACE=)"
            raise MirrorConfigError(f"--upstream: two upstreams for {which}")
        seen.add(upstream.namespace)
    return upstreams


def load_credentials(path: Path | None, upstreams: list[Upstream]) -> list[Upstream]:
    """``upstreams`` with the credentials ``path`` gives them, a TOML file keyed by upstream URL::

        [upstream."https://registry.ollama.ai"]
        key = "/etc/hangar/mirror_ed25519"   # Ollama's signed token requests with this key

        [upstream."https://ghcr.io"]
        username = "bot"
        password = "…"                       # or: token = "…"

    Upstreams it does not name stay anonymous; a section naming no upstream is an error (a typo
    would otherwise silently send no credentials)."""
    if path is None:
        return upstreams
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise MirrorConfigError(f"--upstream-credentials: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise MirrorConfigError(f"--upstream-credentials: {path}: {e}") from None
    sections = doc.get("upstream", {})
    if not isinstance(sections, dict):
        raise MirrorConfigError(f'--upstream-credentials: {path}: [upstream."URL"] sections expected')
    by_url: dict[str, Credentials] = {}
    for raw_url, values in sections.items():
        try:
            url = normalize_origin(raw_url)
        except ValueError:
            raise MirrorConfigError(f"--upstream-credentials: {path}: {raw_url!r} is not an upstream URL") from None
        if not isinstance(values, dict) or set(values) - {"username", "password", "token", "key"}:
            raise MirrorConfigError(
                f'--upstream-credentials: {path}: [upstream."{raw_url}"] takes username and password, token, or key'
            )
        creds = Credentials(
            username=str(values.get("username", "")),
            password=str(values.get("password", "")),
            token=str(values.get("token", "")),
            key_path=str(Path(str(values["key"])).expanduser()) if values.get("key") else "",
        )
        kinds = sum(bool(x) for x in (creds.username, creds.token, creds.key_path))
        if kinds != 1 or bool(creds.username) != bool(creds.password):
            raise MirrorConfigError(
                f'--upstream-credentials: {path}: [upstream."{raw_url}"] needs exactly one of '
                "username+password, token or key"
            )
        if creds.key_path and not Path(creds.key_path).is_file():
            raise MirrorConfigError(f"--upstream-credentials: {path}: key file {creds.key_path} does not exist")
        by_url[url] = creds
    unknown = set(by_url) - {u.url for u in upstreams}
    if unknown:
        raise MirrorConfigError(f"--upstream-credentials: {path}: no --upstream is {', '.join(sorted(unknown))}")
    return [Upstream(u.url, u.namespace, by_url.get(u.url, Credentials())) for u in upstreams]


def parse_cache_size(text: str) -> int | None:
    """``--cache-max-size``: bytes (``500GB``, ``1.5TiB``), or None for no limit (empty or 0)."""
    if not text.strip():
        return None
    try:
        size = parse_size(text)
    except ValueError as e:
        raise MirrorConfigError(f"--cache-max-size: {e}") from None
    return size or None


def route(upstreams: list[Upstream], repository: str) -> Upstream | None:
    """The upstream that serves ``repository``'s namespace: the one naming it, else the catch-all."""
    namespace = repository_namespace(repository)
    fallback = None
    for upstream in upstreams:
        if upstream.namespace == namespace:
            return upstream
        if upstream.namespace is None:
            fallback = upstream
    return fallback
