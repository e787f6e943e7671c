"""Usernames and passwords for registries, stored where Docker, skopeo/podman and oras keep them.

``hangar login`` writes ``$HANGAR_HOME/auth.json`` (mode 0600), in the format of containers'
``auth.json`` and Docker's ``config.json`` (``{"auths": {"host:port": {"auth": base64("user:pass")}}}``),
so ``REGISTRY_AUTH_FILE=~/.hangar/auth.json skopeo …`` reads it too; with ``--docker-config`` it
writes Docker's file (or the credential helper that file names) instead.

When a registry asks for credentials, the first of these that has an entry for its exact
``host[:port]`` is used (``find``):

1. ``$HANGAR_HOME/auth.json``;
2. containers' file: ``$REGISTRY_AUTH_FILE``, else ``$XDG_RUNTIME_DIR/containers/auth.json``;
3. Docker's ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``): the helper named
   for the host in ``credHelpers``, else the entry in ``auths`` (``auth``, or ``identitytoken``, an
   OAuth2 refresh token), else the ``credsStore`` helper. A helper is the program
   ``docker-credential-<name>`` on ``PATH``, run as ``docker-credential-<name> get`` with the host
   on stdin; it answers ``{"Username", "Secret"}`` (``Username`` ``<token>``: an identity token).

Nothing here decides where credentials may be sent: that is client.credentials, applied by
client.auth (only to the registry's own origin, and to the token realm it names).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import errors

AUTH_FILE = "auth.json"  # in HANGAR_HOME
HELPER_TIMEOUT = 30.0  # seconds: a helper may ask the user to unlock a keyring
IDENTITY_TOKEN_USER = "<token>"  # a helper's Username for an identity token (Docker's convention)


@dataclass(frozen=True)
class Login:
    """Credentials for one registry, and where they came from (for messages)."""

    username: str
    password: str
    source: str
    identity_token: str | None = None  # an OAuth2 refresh token instead of a password

    def __repr__(self) -> str:  # never print the secret
        return f"Login({self.username!r}, source={self.source!r})"


def host_key(registry: str) -> str:
    """The key of a registry in the files: ``host[:port]``, lower case, without a scheme or path
    (Docker writes Docker Hub as ``https://index.docker.io/v1/``)."""
    text = registry.strip().lower()
    if "://" in text:
        text = text.split("://", 1)[1]
    return text.split("/", 1)[0]


def hangar_file(home: Path) -> Path:
    return home / AUTH_FILE


def containers_file(env: Mapping[str, str]) -> Path | None:
    if env.get("REGISTRY_AUTH_FILE"):
        return Path(env["REGISTRY_AUTH_FILE"]).expanduser()
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    return None


def docker_file(env: Mapping[str, str]) -> Path:
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]).expanduser() / "config.json"
    return Path(env.get("HOME") or Path.home()) / ".docker" / "config.json"


# -- reading ------------------------------------------------------------------------------------


def find(home: Path, registry: str, env: Mapping[str, str] | None = None) -> Login | None:
    """The stored credentials for ``registry`` (a host or URL), or None (see the module's
    docstring for the order)."""
    env = os.environ if env is None else env
    host = host_key(registry)
    for path in (hangar_file(home), containers_file(env)):
        if path is not None:
            login = _from_auths(_read(path), host, str(path))
            if login is not None:
                return login
    path = docker_file(env)
    doc = _read(path)
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        helper = {host_key(k): v for k, v in helpers.items()}.get(host)
        if isinstance(helper, str) and helper:
            return _from_helper(helper, host, env)
    login = _from_auths(doc, host, str(path))
    if login is not None:
        return login
    store = doc.get("credsStore")
    return _from_helper(store, host, env) if isinstance(store, str) and store else None


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise errors.HangarError(f"cannot read the credentials in {path}: {e}") from None
    return doc if isinstance(doc, dict) else {}


def _from_auths(doc: dict[str, Any], host: str, source: str) -> Login | None:
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
    entry = {host_key(k): v for k, v in auths.items()}.get(host)
    if not isinstance(entry, dict):
        return None
    token = entry.get("identitytoken") or None
    username, password = "", ""
    if entry.get("auth"):
        try:
            username, _, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise errors.HangarError(f"{source}: the credentials for {host} are not base64 of user:password") from None
    elif entry.get("username"):  # an old format some tools still write
        username, password = str(entry["username"]), str(entry.get("password") or "")
    if not username and not token:
        return None  # an empty entry: the credsStore has it
    return Login(username, password, source, str(token) if token else None)


def _helper(name: str, env: Mapping[str, str]) -> str:
    program = f"docker-credential-{name}"
    found = shutil.which(program, path=env.get("PATH"))
    if found is None:
        raise errors.HangarError(f"the credential helper {program} named in Docker's config.json is not on PATH")
    return found


def _from_helper(name: str, host: str, env: Mapping[str, str]) -> Login | None:
    program = _helper(name, env)
    try:
        done = subprocess.run(
            [program, "get"], input=host, capture_output=True, text=True, timeout=HELPER_TIMEOUT, env=dict(env)
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise errors.HangarError(f"the credential helper {program} failed: {e}") from None
    if done.returncode != 0:
        if "credentials not found" in (done.stdout + done.stderr).lower():
            return None
        raise errors.HangarError(
            f"the credential helper {program} failed for {host}: {errors.printable(done.stderr.strip()[:300])}"
        )
    try:
        answer = json.loads(done.stdout)
        username, secret = str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        raise errors.HangarError(f"the credential helper {program} answered without Username and Secret") from None
    if username == IDENTITY_TOKEN_USER:
        return Login("", "", f"docker-credential-{name}", secret)
    return Login(username, secret, f"docker-credential-{name}")


# -- writing ------------------------------------------------------------------------------------


def save(home: Path, registry: str, username: str, password: str, *, docker: bool = False,
         env: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """Store credentials for ``registry``; returns where they went (a file or a helper)."""
    env = os.environ if env is None else env
    host = host_key(registry)
    if docker:
        path = docker_file(env)
        doc = _read(path)
        helper = _docker_helper(doc, host)
        if helper is not None:
            _run_helper(helper, "store", json.dumps({"ServerURL": host, "Username": username, "Secret": password}), env)
            doc.setdefault("auths", {})[host] = {}  # Docker's marker: the helper holds it
            _write(path, doc)
            return f"docker-credential-{helper}"
    else:
        path = hangar_file(home)
        doc = _read(path)
    auths = doc.setdefault("auths", {})
    for key in [k for k in auths if host_key(k) == host]:
        del auths[key]
    auths[host] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    _write(path, doc)
    return str(path)


def remove(home: Path, registry: str, *, docker: bool = False, env: Mapping[str, str] | None = None) -> list[str]:
    """Forget the credentials for ``registry``; returns where they were removed from."""
    env = os.environ if env is None else env
    host = host_key(registry)
    path = docker_file(env) if docker else hangar_file(home)
    doc = _read(path)
    removed = []
    if docker:
        helper = _docker_helper(doc, host)
        if helper is not None:
            _run_helper(helper, "erase", host, env)
            removed.append(f"docker-credential-{helper}")
    auths = doc.get("auths")
    if isinstance(auths, dict):
        keys = [k for k in auths if host_key(k) == host]
        for key in keys:
            del auths[key]
        if keys:
            _write(path, doc)
            removed.append(str(path))
    return removed


def _docker_helper(doc: dict[str, Any], host: str) -> str | None:
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        helper = {host_key(k): v for k, v in helpers.items()}.get(host)
        if isinstance(helper, str) and helper:
            return helper
    store = doc.get("credsStore")
    return store if isinstance(store, str) and store else None


def _run_helper(name: str, action: str, stdin: str, env: Mapping[str, str]) -> None:
    program = _helper(name, env)
    try:
        done = subprocess.run(
            [program, action], input=stdin, capture_output=True, text=True, timeout=HELPER_TIMEOUT, env=dict(env)
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise errors.HangarError(f"the credential helper {program} failed: {e}") from None
    if done.returncode != 0 and not (action == "erase" and "not found" in done.stderr.lower()):
        raise errors.HangarError(f"{program} {action} failed: {errors.printable(done.stderr.strip()[:300])}")


def _write(path: Path, doc: dict[str, Any]) -> None:
    """Atomically, readable by the owner only (the file holds passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
    os.chmod(tmp, 0o600)  # an existing tmp file keeps its mode through O_CREAT
    os.replace(tmp, path)
