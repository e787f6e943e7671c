"""Where this machine's credentials may go: the registries its key signs token requests for, the
scopes a token request may carry, and the one origin a registry's bearer token is sent to.

The rules (issue #19, findings 11 and 15), all applied by ``client.auth.RegistryAuth``:

- **Whom the key signs for.** A token request is signed only for a registry the user signed in
  to (``hangar signin`` records its host in ``$HANGAR_HOME/signed-in.json``) or listed
  explicitly: ``sign = true`` under ``[registries."HOST"]`` in ``config.toml``, or
  ``HANGAR_SIGN_FOR=host1,host2`` (for a key bound to an account some other way, such as
  Ollama's). Every other registry gets anonymous token requests, so a hostile registry never
  holds a signed request it could relay to one where the key means something.
- **What the key signs.** The code that starts a transfer states its intent (a pull of X:
  ``repository:X:pull``; a push of X: ``repository:X:pull,push`` and pull on the repositories
  its layers are mounted from). A token request carries the challenge's scopes cut down to that
  intent, and a challenge naming nothing of it is refused. The ``service`` is the registry's own
  host, whatever the challenge says.
- **Where credentials go.** A bearer token, Basic credentials and a signed token request are for
  the exact origin (scheme, host and port) of the registry that issued the challenge. A request to
  any other origin (a CDN or object-store URL in a redirect, a ``Link`` or upload ``Location`` on
  another host) goes without them, and nothing that started on https continues on plain http.
- **A token realm on another origin** (Docker Hub's registry-1.docker.io names auth.docker.io) is
  asked over https only (or plain http on loopback when the registry itself is on loopback), with
  the username and password stored for the registry that named it (``hangar login``: the user
  gave that registry these credentials, and it chose its token server) or anonymously; never with
  the key's signature, which is for the registry's own origin only (``realm_allowed``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

from client import errors
from client.config import ClientSettings
from formats.auth import Scope

SIGNED_IN_FILE = "signed-in.json"  # in HANGAR_HOME
_DEFAULT_PORTS = {"http": 80, "https": 443}


# -- origins -------------------------------------------------------------------------------------


def origin(url: str | httpx.URL) -> tuple[str, str, int]:
    """``(scheme, host, port)``, lower case, with the scheme's default port filled in."""
    u = httpx.URL(url) if isinstance(url, str) else url
    scheme = u.scheme.lower()
    return scheme, u.host.lower(), u.port or _DEFAULT_PORTS.get(scheme, 0)


def origin_text(url: str | httpx.URL) -> str:
    """``scheme://host[:port]`` as the URL spells it, for messages."""
    u = httpx.URL(url) if isinstance(url, str) else url
    return f"{u.scheme}://{u.netloc.decode()}"


def same_origin(a: str | httpx.URL, b: str | httpx.URL) -> bool:
    return origin(a) == origin(b)


def registry_host(url: str | httpx.URL) -> str:
    """``host[:port]`` as model names and the config spell it (no default port)."""
    scheme, host, port = origin(url)
    shown = f"[{host}]" if ":" in host else host
    return shown if port == _DEFAULT_PORTS.get(scheme) else f"{shown}:{port}"


def refuse_downgrade(registry: str | httpx.URL, url: str | httpx.URL, what: str) -> None:
    """Raise if ``url`` would leave https for plain http: whatever it carries (a token, a signed
    request, a presigned URL, the bytes of a model) would cross the network in clear, and an
    attacker on the path could change the answer."""
    if origin(registry)[0] == "https" and origin(url)[0] != "https":
        raise errors.UnsafeRequest(
            f"{what}: the registry {display(registry)} sent the client to {display(url)}, plain http: "
            "refusing to leave https (a registry behind a TLS proxy needs --public-url https://…)"
        )


def realm_allowed(registry: str | httpx.URL, realm: str | httpx.URL) -> str:
    """Why a token realm on another origin than ``registry``'s may not be asked ("" if it may):
    it must be https, or plain http on loopback for a registry on loopback. Only the registry's
    stored username and password (or nothing) go there, never a signature (client.auth)."""
    realm_scheme, realm_host, _ = origin(realm)
    if realm_scheme == "https":
        return ""
    if realm_scheme == "http" and _loopback(realm_host) and _loopback(origin(registry)[1]):
        return ""
    return "a token realm on another origin must be https"


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def display(url: str | httpx.URL) -> str:
    """``scheme://host[:port]`` of a URL, for messages (never its path or query, which may be a
    signature)."""
    scheme, _, _ = origin(url)
    return f"{scheme}://{registry_host(url)}"


# -- whom the key signs for ----------------------------------------------------------------------


def signed_in(home: Path) -> dict[str, dict[str, Any]]:
    """The registries ``hangar signin`` succeeded with, by host: ``{username, key, since}``."""
    try:
        doc = json.loads((home / SIGNED_IN_FILE).read_text())
        registries = doc["registries"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return {}
    return {str(k).lower(): v for k, v in registries.items()} if isinstance(registries, dict) else {}


def record_signin(home: Path, registry: str, username: str, fingerprint: str) -> None:
    """Remember that this machine's key is bound to ``username`` on ``registry`` (a URL or a
    host), so token requests to it are signed from now on."""
    host = _host_of(registry)
    entries = signed_in(home)
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    entries[host] = {"username": username, "key": fingerprint, "since": since}
    _write(home, entries)


def forget_signin(home: Path, registry: str) -> None:
    """After ``hangar signout``: the registry gets anonymous token requests again."""
    entries = signed_in(home)
    if entries.pop(_host_of(registry), None) is not None:
        _write(home, entries)


def signs_for(settings: ClientSettings, registry: str | httpx.URL) -> bool:
    """Whether token requests to ``registry`` (its base URL) are signed with this machine's key."""
    _, host, port = origin(registry)
    forms = {registry_host(registry), f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}
    configured = {_host_of(entry) for entry in settings.sign_for}
    return not forms.isdisjoint(configured) or not forms.isdisjoint(signed_in(settings.home))


def _host_of(registry: str) -> str:
    return registry_host(registry if "://" in registry else f"https://{registry}").lower()


def _write(home: Path, entries: dict[str, dict[str, Any]]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    path = home / SIGNED_IN_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"registries": entries}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -- what the key signs --------------------------------------------------------------------------


def pull_scope(repository: str) -> str:
    return str(Scope(repository, frozenset({"pull"})))


def push_scopes(repository: str, mount_sources: Iterable[str] = ()) -> list[str]:
    """A push of ``repository``: pull and push there, pull where its layers are mounted from."""
    sources = sorted({s for s in mount_sources if s.lower() != repository.lower()})
    return [str(Scope(repository, frozenset({"pull", "push"}))), *(pull_scope(s) for s in sources)]


def limit_scopes(challenge: str, intent: Sequence[str]) -> list[str]:
    """The scopes to ask for: those of the challenge (space-separated) cut down to ``intent``; the
    intent itself when the challenge names none. A challenge that names only repositories or
    actions outside the intent is refused: the registry is asking for rights this command does
    not need."""
    wanted: dict[str, set[str]] = {}
    for text in intent:
        scope = Scope.parse(text)
        if scope is not None:
            wanted.setdefault(scope.name.lower(), set()).update(scope.actions)
    asked = [text for text in challenge.split(" ") if text]
    if not asked:
        return [str(Scope(name, frozenset(actions))) for name, actions in wanted.items()]
    granted = []
    for text in asked:
        scope = Scope.parse(text)
        if scope is None or scope.type != "repository":
            continue
        actions = scope.actions & wanted.get(scope.name.lower(), set())
        if actions:
            granted.append(str(Scope(scope.name, frozenset(actions))))
    if not granted:
        raise errors.UnsafeRequest(
            f'the registry asked for a token with scope "{challenge}", but this command only needs '
            f'"{" ".join(intent) or "nothing"}": refusing to ask for rights it did not want'
        )
    return granted
