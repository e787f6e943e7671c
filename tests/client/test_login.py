"""``hangar login``/``logout`` and credentials for any OCI registry (issue #20), against real
servers: the reference registry with htpasswd (Basic), a Hangar registry with a robot (Docker's
token flow: Basic at the realm), a credential helper written here, and a token server on another
origin than its registry."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.config import ClientSettings, load
from client.credentials import record_signin
from client.keys import load_or_create
from client.logins import find
from client.pull import pull
from client.push import push
from client.remote import list_tags
from client.store import Store
from formats.names import ModelName
from tests.client.conftest import make_model
from tests.people import Person, audit_rows, unique
from tests.security.test_client_credentials import Reply, Seen, Server
from tests.servers import REPO_ROOT, ReferenceRegistry, RegistryProcess

USER, PASSWORD = "bob", "s3cret-Pa55"


def bcrypt_hash(password: str) -> str:
    """An htpasswd line's hash: bcrypt, the only scheme the reference registry reads. Debian's
    libxcrypt (through the standard library's crypt) makes it; else apache2-utils' htpasswd."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt

            hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
            if hashed and hashed.startswith("$2"):
                return hashed
        except (ImportError, ValueError):
            pass
    exe = shutil.which("htpasswd")
    if not exe:
        pytest.skip("no bcrypt: neither libxcrypt's crypt nor htpasswd (apache2-utils)")
    out = subprocess.run([exe, "-nbB", "x", password], capture_output=True, text=True, check=True).stdout
    return out.strip().split(":", 1)[1]


class BasicRegistry(ReferenceRegistry):
    """The reference registry with ``auth: htpasswd``: every request needs HTTP Basic."""

    ready_status = 401

    def __init__(self, root: Path, users: dict[str, str]) -> None:
        super().__init__(root)
        htpasswd = root / "htpasswd"
        htpasswd.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in users.items()))
        with self.config.open("a") as f:
            f.write(f"auth:\n  htpasswd:\n    realm: hangar-tests\n    path: {htpasswd}\n")


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BasicRegistry]:
    proc = BasicRegistry(tmp_path_factory.mktemp("htpasswd"), {USER: PASSWORD}).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def hangar_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data = tmp_path_factory.mktemp("hangar-login") / "data"
    proc = RegistryProcess(data, "", "--auth", "required", "--signup", "open").start()
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def no_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's own Docker and containers files play no part (client.logins reads them)."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)


def hangar(
    home: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "HANGAR_HOME": str(home), **(env or {})}
    for name in ("HANGAR_KEY", "HANGAR_SIGN_FOR", "HANGAR_MODELS"):
        full.pop(name, None)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], input=stdin, env=full, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def settings_of(home: Path) -> ClientSettings:
    return load({"HANGAR_HOME": str(home)})


def round_trip(home: Path, host: str, repository: str, tmp_path: Path) -> None:
    """Push a model from ``home``'s store and pull it into a fresh store with the same logins."""
    settings = settings_of(home)
    store = Store(settings.models).ensure()
    name = make_model(store, f"{host}/{repository}:v1", os.urandom(300_000))
    asyncio.run(push(name, store, settings))
    other = Store(tmp_path / f"pulled-{unique('s')}").ensure()
    result = asyncio.run(pull(name, other, settings))
    assert result.model.manifest.raw == store.get(name).manifest.raw
    for blob in store.get(name).manifest.blobs():
        assert other.blob_path(blob.digest).read_bytes() == store.blob_path(blob.digest).read_bytes()


# -- the reference registry, HTTP Basic ----------------------------------------------------------


def test_login_then_push_and_pull_with_basic_auth(basic_registry: BasicRegistry, tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = hangar(home, "login", basic_registry.host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert f"Login Succeeded: {USER} on {basic_registry.host}" in done.stdout
    auth_file = home / "auth.json"
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    entry = json.loads(auth_file.read_text())["auths"][basic_registry.host]
    assert base64.b64decode(entry["auth"]).decode() == f"{USER}:{PASSWORD}"

    round_trip(home, basic_registry.host, "team/model", tmp_path)

    # The file is containers' auth.json format: skopeo reads it as it is.
    skopeo = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{basic_registry.host}/team/model:v1"],
        env={**os.environ, "REGISTRY_AUTH_FILE": str(auth_file)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert skopeo.returncode == 0, skopeo.stderr

    done = hangar(home, "logout", basic_registry.host)
    assert done.returncode == 0 and "Removed the login" in done.stdout
    assert json.loads(auth_file.read_text())["auths"] == {}
    done = hangar(home, "pull", f"{basic_registry.host}/team/model:v1")
    assert done.returncode == 1
    assert f"http://{basic_registry.host} asks for a username and password: run 'hangar login" in done.stderr
    assert hangar(home, "logout", basic_registry.host).returncode == 1  # nothing left to remove


def test_wrong_password_is_refused_naming_the_registry(basic_registry: BasicRegistry, tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = hangar(home, "login", basic_registry.host, "-u", USER, "--password-stdin", stdin="wrong\n")
    assert done.returncode == 1
    assert f"http://{basic_registry.host} refused the credentials of '{USER}'" in done.stderr
    assert not (home / "auth.json").exists()  # nothing stored

    # Credentials stored elsewhere that went stale: the pull says which registry and which file.
    docker = tmp_path / "docker"
    docker.mkdir()
    stale = base64.b64encode(f"{USER}:old-password".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {f"https://{basic_registry.host}": {"auth": stale}}}))
    done = hangar(home, "pull", f"{basic_registry.host}/team/model:v1", env={"DOCKER_CONFIG": str(docker)})
    assert done.returncode == 1
    assert (
        f"http://{basic_registry.host} refused the credentials of '{USER}' (from {docker / 'config.json'})"
        in done.stderr
    )
    assert f"hangar login {basic_registry.host}" in done.stderr


# -- credential helpers ---------------------------------------------------------------------------

HELPER = """\
#!{python}
# A docker-credential-* helper: credentials in a JSON file beside it, every call logged.
import json, sys
from pathlib import Path
here = Path(__file__).resolve().parent
action, data = sys.argv[1], sys.stdin.read()
with open(here / "calls.log", "a") as log:
    log.write(json.dumps([action, data]) + "\\n")
store = here / "secrets.json"
secrets = json.loads(store.read_text()) if store.exists() else {{}}
if action == "get":
    if data.strip() not in secrets:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = secrets[data.strip()]
    print(json.dumps({{"ServerURL": data.strip(), "Username": user, "Secret": secret}}))
elif action == "store":
    doc = json.loads(data)
    secrets[doc["ServerURL"]] = [doc["Username"], doc["Secret"]]
    store.write_text(json.dumps(secrets))
elif action == "erase":
    secrets.pop(data.strip(), None)
    store.write_text(json.dumps(secrets))
"""


def install_helper(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / f"docker-credential-{name}"
    script.write_text(HELPER.format(python=sys.executable))
    script.chmod(0o755)
    return directory


def calls(directory: Path) -> list[list[str]]:
    log = directory / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_cred_helpers_are_asked_for_their_registry(basic_registry: BasicRegistry, tmp_path: Path) -> None:
    """``credHelpers`` names a helper for the registry: it is run (``get``, the host on stdin) and
    its answer used; a registry it is not named for never reaches it."""
    bin_dir = install_helper(tmp_path / "bin", "hangartest")
    (bin_dir / "secrets.json").write_text(json.dumps({basic_registry.host: [USER, PASSWORD]}))
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"credHelpers": {basic_registry.host: "hangartest"}}))
    env = {"DOCKER_CONFIG": str(docker), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    home = tmp_path / "home"
    store = Store(settings_of(home).models).ensure()
    name = make_model(store, f"{basic_registry.host}/helper/model:v1", os.urandom(100_000))
    done = hangar(home, "push", name.display(), env=env)
    assert done.returncode == 0, done.stderr
    assert ["get", basic_registry.host] in calls(bin_dir)
    assert all(action == "get" for action, _ in calls(bin_dir))
    assert not (home / "auth.json").exists()

    done = hangar(tmp_path / "elsewhere", "pull", name.display(), env=env)
    assert done.returncode == 0, done.stderr


def test_login_with_docker_config_uses_its_creds_store(basic_registry: BasicRegistry, tmp_path: Path) -> None:
    """``--docker-config`` with a ``credsStore``: the helper stores the secret (``store``), the
    file keeps only Docker's empty marker, pulls ask the helper, logout erases it."""
    bin_dir = install_helper(tmp_path / "bin", "desk")
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"credsStore": "desk", "experimental": "keep me"}))
    env = {"DOCKER_CONFIG": str(docker), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    home = tmp_path / "home"

    done = hangar(home, "login", basic_registry.host, "-u", USER, "--password-stdin", "--docker-config",
                  stdin=PASSWORD, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stored in docker-credential-desk" in done.stdout
    config = json.loads((docker / "config.json").read_text())
    assert config == {"credsStore": "desk", "experimental": "keep me", "auths": {basic_registry.host: {}}}
    assert PASSWORD not in (docker / "config.json").read_text()
    assert json.loads((bin_dir / "secrets.json").read_text()) == {basic_registry.host: [USER, PASSWORD]}
    assert not (home / "auth.json").exists()

    store = Store(settings_of(home).models).ensure()
    name = make_model(store, f"{basic_registry.host}/store/model:v1", os.urandom(50_000))
    assert hangar(home, "push", name.display(), env=env).returncode == 0
    assert [a for a, _ in calls(bin_dir)].count("get") >= 1

    done = hangar(home, "logout", basic_registry.host, "--docker-config", env=env)
    assert done.returncode == 0, done.stderr
    assert ["erase", basic_registry.host] in calls(bin_dir)
    assert json.loads((bin_dir / "secrets.json").read_text()) == {}


def test_containers_auth_json_is_read(
    basic_registry: BasicRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """podman's and skopeo's ``$XDG_RUNTIME_DIR/containers/auth.json`` (and ``REGISTRY_AUTH_FILE``)."""
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (runtime / "containers" / "auth.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    home = tmp_path / "home"
    login = find(home, basic_registry.host)
    assert login is not None and login.username == USER and "containers/auth.json" in login.source
    round_trip(home, basic_registry.host, "podman/model", tmp_path)

    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(elsewhere))
    login = find(home, basic_registry.host)
    assert login is not None and login.source == str(elsewhere)
    assert find(home, "other.example") is None


# -- a Hangar registry: a robot's token through the realm ---------------------------------------


def test_robot_login_pushes_and_pulls_on_a_hangar_registry(hangar_registry: RegistryProcess, tmp_path: Path) -> None:
    """CI with a robot (``ns+name`` and its token) and no key: ``hangar login``, then push and pull
    of private models. The token requests carry the robot's Basic credentials (the audit log
    names the robot); the machine's key signs nothing."""
    alice = Person(hangar_registry, tmp_path / "alice", unique("alice")).signup()
    alice.account.set_default_visibility(alice.name, "private")
    private = alice.model(f"{alice.name}/private")
    alice.push(private)
    robot = alice.account.create_robot(alice.name, "ci", "push", 3600)

    ci = tmp_path / "ci"
    done = hangar(ci, "login", hangar_registry.host, "-u", robot["username"], "--password-stdin", stdin=robot["token"])
    assert done.returncode == 0, done.stderr
    round_trip(ci, hangar_registry.host, f"{alice.name}/from-ci", tmp_path)
    done = hangar(ci, "pull", private.display())
    assert done.returncode == 0, done.stderr
    assert not (ci / "id_ed25519").exists()
    assert audit_rows(hangar_registry, actor=f"robot:{robot['username']}", action="push", outcome="ok")

    # A wrong token: the registry's token endpoint refuses it, and the error says where.
    done = hangar(tmp_path / "ci2", "login", hangar_registry.host, "-u", robot["username"], "--password-stdin",
                  stdin="hgr_wrong")  # fmt: skip
    assert done.returncode == 1
    assert f"http://{hangar_registry.host} refused the credentials of '{robot['username']}'" in done.stderr
    assert "invalid or expired robot credentials" in done.stderr


def test_signed_in_key_stays_the_default_without_a_login(hangar_registry: RegistryProcess, tmp_path: Path) -> None:
    """No stored password for the registry: the ed25519 dance, as before."""
    bob = Person(hangar_registry, tmp_path / "bob", unique("bob")).signup()
    assert find(bob.settings.home, hangar_registry.host) is None
    bob.push(bob.model(f"{bob.name}/model"))
    assert audit_rows(hangar_registry, actor=bob.name, action="push", outcome="ok")


# -- Docker's token flow with the token server on another origin --------------------------------


def test_token_realm_on_another_origin_gets_the_login_not_the_key(tmp_path: Path) -> None:
    """A registry whose realm is a token server elsewhere (Docker Hub: auth.docker.io), and which
    the user both logged in to and signed in to: the token request goes to that server with the
    stored Basic credentials, ``offline_token`` and the challenge's service, never the key's
    signature; the refresh token it hands out renews the token (OAuth2 POST) instead of the
    password. The registry itself never sees the password."""

    def issue(seen: Seen) -> Reply:
        if seen.method == "POST":
            return 200, {"Content-Type": "application/json"}, json.dumps({"token": "T2", "expires_in": 3600}).encode()
        good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if seen.headers.get("authorization") != good:
            return 401, {}, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
        body = {"token": "T1", "expires_in": 1, "refresh_token": "R1"}  # about to expire: renewed next
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    with Server(issue) as tokens:
        realm = f"http://127.0.0.1:{tokens.port}/token"

        def registry_answer(seen: Seen) -> Reply:
            if seen.headers.get("authorization") not in ("Bearer T1", "Bearer T2"):
                scope = ',scope="repository:ns/model:pull"' if "/tags/" in seen.path else ""
                return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="registry.example"{scope}'}, b""
            if seen.path.startswith("/v2/ns/model/tags/list") and "last=a" not in seen.path:
                link = '</v2/ns/model/tags/list?last=a>; rel="next"'
                return 200, {"Content-Type": "application/json", "Link": link}, b'{"name":"ns/model","tags":["a"]}'
            return 200, {"Content-Type": "application/json"}, b'{"name":"ns/model","tags":["b"]}'

        with Server(registry_answer) as registry:
            home = tmp_path / "home"
            identity = load_or_create(settings_of(home).key_path)[0]
            record_signin(home, registry.host, USER, identity.fingerprint)
            done = hangar(home, "login", registry.host, "-u", USER, "--password-stdin", stdin=PASSWORD)
            assert done.returncode == 0, done.stderr
            tags = asyncio.run(list_tags(ModelName.parse(f"{registry.host}/ns/model"), settings_of(home)))
    assert tags == ["a", "b"]
    token_gets = [s for s in tokens.seen if s.method == "GET"]
    assert len(token_gets) == 2  # the login's check, then the pull's first token
    for s in token_gets:
        assert s.headers["authorization"].startswith("Basic ")
        assert s.query["service"] == ["registry.example"] and s.query["offline_token"] == ["true"]
    (refresh,) = [s for s in tokens.seen if s.method == "POST"]
    assert "authorization" not in refresh.headers
    assert all(identity.public_key_b64 not in s.headers.get("authorization", "") for s in tokens.seen)
    assert not any(a.startswith("Basic ") for a in registry.authorizations())
    assert registry.authorizations().count("Bearer T2") == 1  # the second page, after the refresh


def test_realm_on_another_origin_must_be_https() -> None:
    from client.credentials import realm_allowed

    assert realm_allowed("https://registry-1.docker.io", "https://auth.docker.io/token") == ""
    assert realm_allowed("http://127.0.0.1:5000", "http://127.0.0.1:5001/token") == ""
    assert "https" in realm_allowed("https://models.example", "http://auth.example/token")
    assert "https" in realm_allowed("http://models.lan:5000", "http://127.0.0.1:5001/token")


def test_identity_token_in_docker_config_is_used_as_a_refresh_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docker login`` to ACR and others stores an ``identitytoken`` (an OAuth2 refresh token)
    instead of the password: the token comes from a POST with it, never a GET with Basic."""

    def issue(seen: Seen) -> Reply:
        if seen.method != "POST":
            return 401, {}, b'{"errors":[{"code":"UNAUTHORIZED","message":"use OAuth2"}]}'
        return 200, {"Content-Type": "application/json"}, json.dumps({"access_token": "T", "expires_in": 600}).encode()

    with Server(issue) as tokens:
        realm = f"http://127.0.0.1:{tokens.port}/oauth2/token"

        def registry_answer(seen: Seen) -> Reply:
            if seen.headers.get("authorization") != "Bearer T":
                header = f'Bearer realm="{realm}",service="acr.example",scope="repository:ns/model:pull"'
                return 401, {"WWW-Authenticate": header}, b""
            return 200, {"Content-Type": "application/json"}, b'{"name":"ns/model","tags":["v1"]}'

        with Server(registry_answer) as registry:
            docker = tmp_path / "docker"
            docker.mkdir()
            nobody = base64.b64encode(b"00000000-0000-0000-0000-000000000000:").decode()
            entry = {"auth": nobody, "identitytoken": "IDT"}
            (docker / "config.json").write_text(json.dumps({"auths": {registry.host: entry}}))
            monkeypatch.setenv("DOCKER_CONFIG", str(docker))
            name = ModelName.parse(f"{registry.host}/ns/model")
            assert asyncio.run(list_tags(name, settings_of(tmp_path / "home"))) == ["v1"]
    assert [s.method for s in tokens.seen] == ["POST"]
    assert tokens.seen[0].headers["content-type"] == "application/x-www-form-urlencoded"
