"""Signed requests are bound to the registry they were signed for (issue #19, findings 1, 3, 4).

Each test performs an attack against real registry processes: a hostile registry (a real HTTP
server on 127.0.0.1, run by the test) captures what a victim's client signs for it and relays or
replays it to the real registry; robots of disabled accounts; tokens for another audience;
expired tokens and robots. Every one of them succeeded before the fix."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest

from client.account import AccountClient
from formats.auth import API_SIGNATURE_HEADER, body_hash, go_query, normalize_origin, token_signing_string
from registry.config import Settings
from registry.meta import Metadata
from registry.origins import origins
from tests.ollama_wire import OllamaWireClient, WireError
from tests.people import Person, accounts_of, audit_rows, unique
from tests.registry.test_ollama_wire import model
from tests.servers import RegistryProcess

# -- a hostile registry ------------------------------------------------------------------------


@dataclass
class Captured:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]


@dataclass
class HostileRegistry:
    """A registry run by an attacker: records every request and answers with ``answer(request)``."""

    answer: Callable[[Captured], Answer]
    captured: list[Captured] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Captured(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                   self.rfile.read(length))  # fmt: skip
                outer.captured.append(request)
                status, headers, body = outer.answer(request)
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[[Captured], Answer]], HostileRegistry]]:
    made: list[HostileRegistry] = []

    def make(answer: Callable[[Captured], Answer]) -> HostileRegistry:
        made.append(HostileRegistry(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def replay(request: Captured, target: RegistryProcess, **headers: str) -> httpx.Response:
    """Send a captured request to ``target`` as it was (method, path, query, signature, body)."""
    keep = {
        k: v for k, v in request.headers.items() if k in ("authorization", "content-type", "hangar-signature-version")
    }
    return httpx.request(request.method, target.url + request.target, headers={**keep, **headers}, content=request.body)


# -- registries and people ----------------------------------------------------------------------


@pytest.fixture
def registry_a(make_registry) -> RegistryProcess:  # type: ignore[no-untyped-def]
    """The victim's real registry (SQLite and PostgreSQL), loopback only, no --public-url."""
    return make_registry("--auth", "required", "--signup", "open")  # type: ignore[no-any-return]


def person(registry: RegistryProcess, tmp_path: Path, prefix: str, *, signup: bool = True) -> Person:
    name = unique(prefix)
    p = Person(registry, tmp_path / name, name)
    return p.signup() if signup else p


def push_model(owner: Person, repo: str) -> None:
    """Push a small model the way Ollama does, signing with the owner's key."""
    manifest, blobs = model(20_000)
    OllamaWireClient(owner.registry.url, key=owner.identity.private_key).push(repo, "latest", manifest, blobs)


def manifest_status(owner: Person, repo: str) -> int:
    with owner.http(f"repository:{repo}:pull") as c:
        return c.get(f"/v2/{repo}/manifests/latest").status_code


def signed_token_request(owner: Person, signed_base: str, scope: str) -> tuple[str, str]:
    """``(path and query, Authorization)`` of a token request as Ollama signs it for ``signed_base``."""
    params = [("service", signed_base.split("://", 1)[1]), ("scope", scope), ("ts", str(int(time.time())))]
    params.append(("nonce", base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")))
    target = f"/token?{go_query(params)}"
    return target, owner.identity.authorization(token_signing_string(signed_base + target))


def registry_secret(registry: RegistryProcess) -> bytes:
    return Metadata(accounts_of(registry).engine).secret("token-signing")


# -- finding 1: token requests relayed by a hostile registry ------------------------------------


def test_hostile_registry_relays_a_signed_token_request(registry_a: RegistryProcess, hostile, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The victim's Ollama-style client pulls from the hostile registry, which challenges for
    delete rights on the victim's real repository and relays the signed token request to the real
    registry with its own Host. Before the fix the real registry checked the signature against
    ``http://<Host>/token?…`` and handed the relay a delete token."""
    alice = person(registry_a, tmp_path, "alice")
    repo = f"{alice.name}/m2"
    push_model(alice, repo)
    relayed: list[httpx.Response] = []

    def answer(request: Captured) -> Answer:
        if request.target.startswith("/token"):
            # The attack: forward the victim's signed request, exactly, naming ourselves as Host.
            signed = {"Authorization": request.headers.get("authorization", ""), "Host": evil.host}
            r = httpx.get(registry_a.url + request.target, headers=signed)
            relayed.append(r)
            if r.status_code == 200:  # what the attacker would do with the token
                token = r.json()["token"]
                httpx.delete(
                    f"{registry_a.url}/v2/{repo}/manifests/latest", headers={"Authorization": f"Bearer {token}"}
                )
            return r.status_code, {}, r.content
        challenge = (
            f'Bearer realm="{evil.url}/token",service="{registry_a.host}",scope="repository:{repo}:pull,push,delete"'
        )
        return 401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED"}]}'

    evil = hostile(answer)
    victim = OllamaWireClient(evil.url, key=alice.identity.private_key)
    with pytest.raises(WireError):
        victim.pull(f"{alice.name}/anything", "latest", tmp_path)

    assert relayed, "the victim's client signed a token request for the hostile registry"
    assert [r.status_code for r in relayed] == [401]
    assert "signature does not match" in relayed[0].text
    assert manifest_status(alice, repo) == 200, "the relayed token deleted the victim's model"
    reasons = [r.detail.get("reason", "") for r in audit_rows(registry_a, action="auth", outcome="denied")]
    assert any("signature does not match" in reason for reason in reasons)


@pytest.mark.parametrize(
    ("signed_for", "host", "forwarded_proto"),
    [
        ("http://evil:5960", "evil:5960", None),
        ("https://ollama.com", "ollama.com", "https"),
        ("http://ollama.com", "ollama.com", None),
    ],
)
def test_token_request_signed_for_another_host_is_refused(  # type: ignore[no-untyped-def]
    registry_a: RegistryProcess, tmp_path: Path, signed_for: str, host: str, forwarded_proto: str | None
) -> None:
    """The exact relay of the issue: a request signed for another registry's URL, sent with that
    registry's Host (and X-Forwarded-Proto, which uvicorn believed from 127.0.0.1 by default)."""
    alice = person(registry_a, tmp_path, "alice")
    scope = f"repository:{alice.name}/m2:pull,push,delete"
    target, authorization = signed_token_request(alice, signed_for, scope)
    headers = {"Authorization": authorization, "Host": host}
    if forwarded_proto:
        headers["X-Forwarded-Proto"] = forwarded_proto
    r = httpx.get(registry_a.url + target, headers=headers)
    assert r.status_code == 401, r.text
    assert "signature does not match" in r.text
    assert "--public-url" in r.text and "--allowed-host" in r.text  # what to do if that name is ours

    # The same key, signing for this registry under any of its loopback names, gets its token.
    for base in (registry_a.url, f"http://localhost:{registry_a.port}"):
        target, authorization = signed_token_request(alice, base, scope)
        r = httpx.get(registry_a.url + target, headers={"Authorization": authorization, "Host": base[7:]})
        assert r.status_code == 200, r.text
        claims = jwt.decode(r.json()["token"], options={"verify_signature": False})
        assert claims["aud"] == registry_a.host and claims["access"][0]["actions"] == ["delete", "pull", "push"]


def test_urls_never_name_a_strangers_host(registry_a: RegistryProcess, tmp_path: Path) -> None:
    """A request with a Host that is not ours gets challenges and Location headers naming this
    registry (its canonical origin), not the Host it sent; X-Forwarded-Proto from a client that is
    not a configured proxy changes nothing."""
    r = httpx.get(f"{registry_a.url}/v2/", headers={"Host": "evil:5960", "X-Forwarded-Proto": "https"})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith(
        f'Bearer realm="{registry_a.url}/token",service="{registry_a.host}"'
    )
    assert "--allowed-host" in r.text
    r = httpx.get(f"{registry_a.url}/v2/", headers={"X-Forwarded-Proto": "https"})
    assert r.headers["WWW-Authenticate"].startswith(f'Bearer realm="{registry_a.url}/token"')

    alice = person(registry_a, tmp_path, "alice")
    with alice.http(f"repository:{alice.name}/m:pull,push") as c:
        r = c.post(f"/v2/{alice.name}/m/blobs/uploads/", headers={"Host": "evil:5960"})
        assert r.status_code == 202 and r.headers["Location"].startswith(registry_a.url + "/")
        # Under a loopback name of ours, the client keeps the name it used (Ollama checks the realm).
        r = c.post(f"/v2/{alice.name}/m/blobs/uploads/", headers={"Host": f"localhost:{registry_a.port}"})
        assert r.headers["Location"].startswith(f"http://localhost:{registry_a.port}/")


def test_allowed_hosts_and_trusted_proxies(make_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``--allowed-host`` adds a name; ``X-Forwarded-Proto`` counts only from ``--trusted-proxy``."""
    proxied = make_registry(
        "--auth", "required", "--signup", "open", "--allowed-host", "https://models.lan", "--trusted-proxy", "127.0.0.1"
    )
    alice = person(proxied, tmp_path, "alice")
    scope = f"repository:{alice.name}/m:pull"
    headers = {"Host": "models.lan", "X-Forwarded-Proto": "https"}
    r = httpx.get(f"{proxied.url}/v2/", headers=headers)
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="https://models.lan/token",service="models.lan"')
    target, authorization = signed_token_request(alice, "https://models.lan", scope)
    r = httpx.get(proxied.url + target, headers={**headers, "Authorization": authorization})
    assert r.status_code == 200, r.text
    # Its tokens are for the canonical service (the listen address), and good under every name.
    assert jwt.decode(r.json()["token"], options={"verify_signature": False})["aud"] == proxied.host

    direct = make_registry("--auth", "required", "--signup", "open", "--allowed-host", "https://models.lan")
    r = httpx.get(f"{direct.url}/v2/", headers=headers)  # the same headers from an untrusted client
    assert r.headers["WWW-Authenticate"].startswith(f'Bearer realm="{direct.url}/token"')


def test_origins_of_a_registry() -> None:
    """The rule itself, for the set-ups the processes above do not start (a wildcard listen, TLS,
    --public-url)."""
    loopback = origins(Settings(listen="127.0.0.1:5000"))
    assert loopback.allowed == ("http://127.0.0.1:5000", "http://localhost:5000", "http://[::1]:5000")
    wildcard = origins(Settings(listen="0.0.0.0:5000", ssl_certfile="c", ssl_keyfile="k"))
    assert wildcard.canonical == "https://127.0.0.1:5000" and wildcard.wildcard
    assert wildcard.base_url("https", "models.lan:5000") == "https://127.0.0.1:5000"
    assert "--public-url or --allowed-host models.lan:5000" in wildcard.hint("models.lan:5000")
    named = origins(Settings(listen="0.0.0.0:5000", allowed_hosts="models.lan:5000"))
    assert named.canonical == "http://models.lan:5000" and "http://localhost:5000" in named.allowed
    public = origins(Settings(listen="127.0.0.1:5000", public_url="https://Models.Example.com:443/"))
    assert public.allowed == ("https://models.example.com",) and public.services == ("models.example.com",)
    assert public.base_url("http", "models.example.com") == "https://models.example.com"  # an unproxied scheme
    assert public.base_url("https", "models.example.com:443") == "https://models.example.com:443"
    assert "https://Models.Example.com:443" in public.candidates("http", "evil:5960")
    lan = origins(Settings(listen="10.1.2.3:5000"))
    assert lan.allowed == ("http://10.1.2.3:5000",)  # not loopback: no other process's loopback names
    assert normalize_origin("HTTP://[::1]:80/x?y") == "http://[::1]"
    with pytest.raises(ValueError):
        Settings(allowed_hosts="https://models.lan/registry").validate()
    with pytest.raises(ValueError):
        Settings(trusted_proxies="proxy.lan").validate()


# -- finding 3: account API requests replayed from another registry ------------------------------


def signed_elsewhere(owner: Person, hostile, call: Callable[[AccountClient], object], answer: Answer) -> Captured:  # type: ignore[no-untyped-def]
    """What ``owner``'s client sends to a hostile registry when told to ``call`` it there."""
    evil = hostile(lambda request: answer)
    call(AccountClient(evil.url, owner.identity, owner.settings))
    (request,) = evil.captured
    return request


def test_robot_creation_signed_for_another_registry_is_refused(registry_a: RegistryProcess, hostile, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Alice creates a push robot on registry B (hostile); B replays the signed request to A, where
    alice has the same key. Before the fix A created alice's push robot and gave B its token."""
    alice = person(registry_a, tmp_path, "alice")
    robot = {"username": f"{alice.name}+ci", "token": "hgr_x", "scope": "push", "expires_at": "2030-01-01T00:00:00"}
    request = signed_elsewhere(
        alice, hostile, lambda c: c.create_robot(alice.name, "ci", "push", 86400), (201, {}, json.dumps(robot).encode())
    )
    r = replay(request, registry_a)
    assert r.status_code == 401, r.text
    assert "signature does not match" in r.json()["error"]
    assert alice.account.robots(alice.name) == []
    # With the Host of the registry it was signed for, too.
    r = replay(request, registry_a, Host=request.headers["host"])
    assert r.status_code == 401 and alice.account.robots(alice.name) == []
    # Alice's own request to A, signed for A, works.
    assert alice.account.create_robot(alice.name, "ci", "push", 86400)["username"] == f"{alice.name}+ci"


def test_key_approval_signed_for_another_registry_is_refused(registry_a: RegistryProcess, hostile, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Mallory asks A to add his key to alice's account (a code), then gets alice to approve that
    code on his registry B; B replays the signed approval to A. Before the fix: account takeover."""
    alice = person(registry_a, tmp_path, "alice")
    mallory = person(registry_a, tmp_path, "mallory", signup=False)
    pending = mallory.account.signin(alice.name, "mallory's laptop")
    assert pending.status == 202
    code = pending.body["code"]
    approved = {"status": "approved", "fingerprint": "SHA256:x", "name": "n", "created_at": "", "last_used_at": None}
    request = signed_elsewhere(alice, hostile, lambda c: c.approve(code), (200, {}, json.dumps(approved).encode()))
    r = replay(request, registry_a)
    assert r.status_code == 401, r.text
    assert mallory.account.call("GET", "/hangar/v1/me").status == 401, "mallory's key was bound to alice"
    assert [k["name"] for k in alice.account.list_keys()] == ["test device"]


def test_unbound_account_signatures_are_refused_with_a_clear_message(registry_a: RegistryProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The old scheme (``<METHOD>,<path>?<query>,<hash>``: no registry in it, so replayable between
    registries) is refused, telling the user to upgrade, and the refusal is audited."""
    alice = person(registry_a, tmp_path, "alice")
    params = [("nonce", base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")), ("ts", str(int(time.time())))]
    target = f"/hangar/v1/me?{go_query(params)}"
    authorization = alice.identity.authorization(f"GET,{target},{body_hash(b'')}".encode())
    r = httpx.get(registry_a.url + target, headers={"Authorization": authorization})
    assert r.status_code == 401
    assert "newer hangar client" in r.json()["error"] and "v2" in r.json()["error"]
    # A v2 marker on a v1 signature is no way round it.
    r = httpx.get(registry_a.url + target, headers={"Authorization": authorization, API_SIGNATURE_HEADER: "2"})
    assert r.status_code == 401 and "signature does not match" in r.json()["error"]
    reasons = [r.detail.get("reason", "") for r in audit_rows(registry_a, action="auth", outcome="denied")]
    assert any("newer hangar client" in reason for reason in reasons)


# -- finding 4: robots of disabled accounts --------------------------------------------------------


def robot_token(registry: RegistryProcess, robot: dict[str, str], scope: str) -> httpx.Response:
    return httpx.get(
        f"{registry.url}/token",
        params={"service": registry.host, "scope": scope},
        auth=(robot["username"], robot["token"]),
    )


def test_robots_of_a_disabled_account_are_refused(registry_a: RegistryProcess, tmp_path: Path) -> None:
    """After ``hangar registry admin user disable bob``, ``bob+ci`` got a delete token and deleted
    ``bob/m``. Now its credentials and the tokens it already holds are refused; the same for an
    organisation's robot when the organisation is disabled."""
    bob = person(registry_a, tmp_path, "bob")
    repo = f"{bob.name}/m"
    push_model(bob, repo)
    org = unique("org")
    accounts = accounts_of(registry_a)
    accounts.create_org(org, owner=bob.name)
    robots = {
        bob.name: bob.account.create_robot(bob.name, "ci", "push", 86400),
        org: bob.account.create_robot(org, "ci", "push", 86400),
    }
    held = {}
    for namespace, robot in robots.items():
        r = robot_token(registry_a, robot, f"repository:{namespace}/m:pull,push,delete")
        assert r.status_code == 200 and jwt.decode(r.json()["token"], options={"verify_signature": False})["access"]
        held[namespace] = r.json()["token"]

    for namespace, robot in robots.items():
        accounts.set_disabled(namespace, True)
        r = robot_token(registry_a, robot, f"repository:{namespace}/m:pull,push,delete")
        assert r.status_code == 401 and "disabled" in r.text, r.text
        r = httpx.delete(
            f"{registry_a.url}/v2/{namespace}/m/manifests/latest",
            headers={"Authorization": f"Bearer {held[namespace]}"},
        )
        assert r.status_code == 401 and "disabled" in r.text, r.text
    accounts.set_disabled(bob.name, False)
    assert manifest_status(bob, repo) == 200


def test_tokens_of_a_disabled_user_stop_at_once(registry_a: RegistryProcess, tmp_path: Path) -> None:
    """A user's token issued before ``disable`` no longer works (it used to until it expired)."""
    eve = person(registry_a, tmp_path, "eve")
    repo = f"{eve.name}/m"
    push_model(eve, repo)
    with eve.http(f"repository:{repo}:pull,delete") as c:
        accounts_of(registry_a).set_disabled(eve.name, True)
        r = c.delete(f"/v2/{repo}/manifests/latest")
        assert r.status_code == 401 and "disabled" in r.text
    accounts_of(registry_a).set_disabled(eve.name, False)
    assert manifest_status(eve, repo) == 200


# -- the token audience ------------------------------------------------------------------------------


def test_tokens_for_another_audience_are_refused(registry_a: RegistryProcess, tmp_path: Path) -> None:
    """A token signed with this registry's key (as one of several registries sharing a key would
    mint it) but for another service is refused; a token request naming a foreign service gets a
    token for ours."""
    alice = person(registry_a, tmp_path, "alice")
    repo = f"{alice.name}/m"
    push_model(alice, repo)
    good = alice.token(f"repository:{repo}:pull")
    claims = jwt.decode(good, options={"verify_signature": False})
    assert claims["aud"] == registry_a.host
    secret = registry_secret(registry_a)
    for aud in ("evil:5960", None):
        forged = {**claims, "aud": aud} if aud else {k: v for k, v in claims.items() if k != "aud"}
        token = jwt.encode(forged, secret, algorithm="HS256")
        r = httpx.get(f"{registry_a.url}/v2/{repo}/manifests/latest", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, (aud, r.text)
        assert "invalid" in r.text

    target, authorization = signed_token_request(alice, registry_a.url, f"repository:{repo}:pull")
    target = target.replace(f"service={registry_a.host.replace(':', '%3A')}", "service=evil%3A5960")
    authorization = alice.identity.authorization(token_signing_string(registry_a.url + target))
    r = httpx.get(registry_a.url + target, headers={"Authorization": authorization})
    assert r.status_code == 200
    assert jwt.decode(r.json()["token"], options={"verify_signature": False})["aud"] == registry_a.host


# -- guards: expiry ------------------------------------------------------------------------------------


def test_an_expired_token_with_the_right_scope_is_refused(registry_a: RegistryProcess, tmp_path: Path) -> None:
    """Unlike tests/auth's tampered-token test, this token has the scope and the audience: only
    its expiry refuses it (the test fails if ``verify`` stops checking ``exp``)."""
    alice = person(registry_a, tmp_path, "alice")
    repo = f"{alice.name}/m"
    push_model(alice, repo)
    claims = jwt.decode(alice.token(f"repository:{repo}:pull,delete"), options={"verify_signature": False})
    now = int(time.time())
    secret = registry_secret(registry_a)
    fresh = jwt.encode({**claims, "iat": now - 10, "nbf": now - 10, "exp": now + 60}, secret, algorithm="HS256")
    expired = jwt.encode({**claims, "iat": now - 600, "nbf": now - 600, "exp": now - 300}, secret, algorithm="HS256")
    url = f"{registry_a.url}/v2/{repo}/manifests/latest"
    assert httpx.get(url, headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    r = httpx.delete(url, headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.text
    assert manifest_status(alice, repo) == 200


def test_an_expired_robot_is_refused(registry_a: RegistryProcess, tmp_path: Path) -> None:
    """A robot past its ``expires_at`` gets no token (the test fails if ``Accounts.robot`` stops
    checking the expiry), and the tokens it holds stop working."""
    alice = person(registry_a, tmp_path, "alice")
    accounts = accounts_of(registry_a)
    scope = f"repository:{alice.name}/m:pull,push"
    live, live_token = accounts.create_robot(alice.name, "live", "push", 3600)
    r = robot_token(registry_a, {"username": live.username, "token": live_token}, scope)
    assert r.status_code == 200, r.text
    held = r.json()["token"]
    old, old_token = accounts.create_robot(alice.name, "old", "push", -60)
    r = robot_token(registry_a, {"username": old.username, "token": old_token}, scope)
    assert r.status_code == 401 and "expired" in r.text

    accounts.create_robot(alice.name, "live", "push", -60)  # replaced by an expired one
    r = httpx.post(f"{registry_a.url}/v2/{alice.name}/m/blobs/uploads/", headers={"Authorization": f"Bearer {held}"})
    assert r.status_code == 401 and "expired" in r.text
