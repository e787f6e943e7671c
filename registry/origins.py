"""The origins of this registry (the ``scheme://host[:port]`` names it answers to) and the one rule
that binds signed requests, challenges, token audiences and absolute URLs to them.

A signed token request or account-API request names the registry it was signed for (the token
URL; the origin in the v2 account signing string). The registry accepts it only when that name is
one of its own, never because the request's ``Host`` header says so: a hostile registry that
relays a victim's signed request with ``Host: evil:5960`` would otherwise be believed. Our origins:

- ``--public-url`` (the canonical one) and every ``--allowed-host``;
- without ``--public-url``: the listen address, and when that is a loopback or wildcard address
  (``0.0.0.0``, ``::``) the loopback names ``127.0.0.1``, ``localhost`` and ``[::1]`` with the
  listen port; ``https`` when uvicorn serves TLS itself (``--ssl-certfile``). A wildcard listen
  reaches the machine under names we cannot know: the operator names them with ``--public-url``
  or ``--allowed-host``, and refusals say so.

The scheme of a request is ``http`` or ``https`` as uvicorn saw it; ``X-Forwarded-Proto`` changes
it only from ``--trusted-proxy`` addresses (``registry.server``).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from formats.auth import normalize_origin

if TYPE_CHECKING:
    from registry.config import Settings

log = logging.getLogger("hangar.registry")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")
_MAX_WARNED = 100  # distinct unknown Host names logged per process (a client chooses them)
_WARNED: set[str] = set()


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def check_allowed_hosts(text: str) -> None:
    """Raise ValueError for an ``--allowed-host`` entry that is not host[:port] or an http(s) origin."""
    for item in split_list(text):
        try:
            _allowed_origin(item, "http")
        except ValueError as e:
            raise ValueError(f"--allowed-host {item!r}: {e}") from None


def check_trusted_proxies(text: str) -> None:
    """Raise ValueError for a ``--trusted-proxy`` entry that is not an IP address, a network or ``*``."""
    for item in split_list(text):
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"--trusted-proxy {item!r}: expected an IP address, a network (CIDR) or '*'") from None


def _allowed_origin(item: str, scheme: str) -> str:
    """An ``--allowed-host`` entry as a normalized origin; a bare host[:port] takes ``scheme``."""
    if "://" in item:
        rest = item.split("://", 1)[1].rstrip("/")
        if any(c in rest for c in "/?#"):
            # A path would be silently dropped: say so rather than guess what was meant.
            raise ValueError("give an origin, scheme://host[:port], without a path")
        return normalize_origin(item)
    if any(c in item for c in "/?#@"):
        raise ValueError("give host[:port] or scheme://host[:port]")
    return normalize_origin(f"{scheme}://{item}")


def service_of(origin: str) -> str:
    """The ``host[:port]`` of a normalized origin: the challenge's ``service`` and a token's ``aud``."""
    return origin.split("://", 1)[1]


@dataclass(frozen=True)
class Origins:
    canonical: str  # normalized; named when the request's own origin is not ours
    allowed: tuple[str, ...]  # normalized, canonical first
    spelled: tuple[str, ...]  # as configured (--public-url verbatim): what a client may have signed
    wildcard: bool  # listening on every address: the machine's other names are unknown to us

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(service_of(o) for o in self.allowed))

    @property
    def canonical_service(self) -> str:
        return service_of(self.canonical)

    def is_ours(self, origin: str) -> bool:
        try:
            return normalize_origin(origin) in self.allowed
        except ValueError:
            return False

    def request_origin(self, scheme: str, host: str) -> str | None:
        """``scheme://host`` as the client spelled it, if that names this registry, else None."""
        origin = f"{scheme}://{host}"
        return origin if host and self.is_ours(origin) else None

    def base_url(self, scheme: str, host: str) -> str:
        """The origin to name in URLs handed to this client: the one it used, when it is ours
        (Ollama insists the realm be on the host it asked), else the canonical one."""
        own = self.request_origin(scheme, host)
        if own is not None:
            return own
        self.warn_unknown(host)
        return self.canonical

    def candidates(self, scheme: str, host: str) -> list[str]:
        """Every spelling of our origins a client may have signed: the normalized ones, the
        configured ones, and the request's own when it names us (e.g. with an explicit :443)."""
        out = list(dict.fromkeys([*self.allowed, *self.spelled]))
        own = self.request_origin(scheme, host)
        if own is not None and own not in out:
            out.append(own)
        return out

    def hint(self, host: str) -> str:
        """What to tell a client whose request reached us under a name that is not ours."""
        if not host or self.is_ours(f"http://{host}") or self.is_ours(f"https://{host}"):
            return ""
        return (
            f"; this registry answers to {', '.join(self.allowed)}, not {host!r}: if that is this registry's"
            f" name, start it with --public-url or --allowed-host {host}"
        )

    def warn_unknown(self, host: str) -> None:
        _warn_once(host, ", ".join(self.allowed))


def _warn_once(host: str, ours: str) -> None:
    if host in _WARNED or len(_WARNED) >= _MAX_WARNED:
        return
    _WARNED.add(host)
    log.warning(
        "a request named this registry %r, which is not one of its names (%s): URLs and tokens name %s;"
        " set --public-url or --allowed-host if clients use that name",
        host[:200],
        ours,
        ours.split(", ", 1)[0],
    )


@lru_cache(maxsize=8)
def origins(settings: Settings) -> Origins:
    """This registry's origins, from its (frozen, hashable) settings; see the module docstring."""
    scheme = "https" if settings.ssl_certfile else "http"
    spelled: list[str] = []
    allowed: list[str] = []
    if settings.public_url:
        spelled.append(settings.public_url.rstrip("/"))
        allowed.append(normalize_origin(settings.public_url))
        scheme = allowed[0].split("://", 1)[0]
    extra = [_allowed_origin(item, scheme) for item in split_list(settings.allowed_hosts)]
    listen_host = settings.host.lower()
    wildcard = listen_host in WILDCARD_HOSTS
    if not settings.public_url:
        port = settings.port
        hosts: list[str] = []
        if not wildcard:
            hosts.append(f"[{listen_host}]" if ":" in listen_host else listen_host)
        if wildcard or _is_loopback(listen_host):
            hosts += LOOPBACK_HOSTS
        local = [normalize_origin(f"{scheme}://{h}:{port}") for h in dict.fromkeys(hosts)]
        # The canonical name: an explicit --allowed-host over a wildcard's stand-in 127.0.0.1.
        allowed += [*extra, *local] if wildcard and extra else [*local, *extra]
    else:
        allowed += extra
    allowed = list(dict.fromkeys(allowed))
    return Origins(allowed[0], tuple(allowed), tuple(spelled), wildcard and not settings.public_url)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
