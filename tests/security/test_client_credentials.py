"""Where the client sends its key and its tokens (issue #19, findings 11 and 15), attacked by real
servers on 127.0.0.1: a hostile registry that asks for a signed token request naming the user's
real registry and relays it there; registries that send credentials to plain http (a redirect, a
realm) or to another host (a tags ``Link``, an upload ``Location``, a blob redirect). A second
server records the ``Authorization`` each request carried."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from client import errors
from client.config import ClientSettings, load
from client.credentials import SIGNED_IN_FILE, limit_scopes, signed_in
from client.pull import pull
from client.push import push
from client.remote import list_tags
from client.store import Store
from formats import mediatypes as mt
from formats.names import ModelName
from tests.client.conftest import make_model
from tests.client.test_errors import _self_signed
from tests.people import Person, unique
from tests.servers import REPO_ROOT, RegistryProcess

# -- a real server that answers as told and records what it gets --------------------------------


@dataclass
class Seen:
    scheme: str
    method: str
    path: str  # with the query
    headers: dict[str, str]  # lower-case names

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


Reply = tuple[int, dict[str, str], bytes]


class Server:
    """An HTTP server on 127.0.0.1, in a thread, answering through ``answer`` and recording every
    request. With a TLS context it speaks https *and* plain http on the same port (it looks at
    the first byte of each connection): one host and port under both schemes, which is what a
    downgrade on "the same host" needs."""

    def __init__(self, answer: Callable[[Seen], Reply], tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
                seen = Seen(scheme, self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                owner.seen.append(seen)
                status, headers, body = owner.answer(seen)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        class Sniffing(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, object]:
                sock, addr = super().get_request()
                if tls is not None:
                    sock.settimeout(10)
                    if sock.recv(1, socket.MSG_PEEK) == b"\x16":  # a TLS handshake record
                        sock = tls.wrap_socket(sock, server_side=True)
                return sock, addr

        self.httpd = Sniffing(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def authorizations(self) -> list[str]:
        return [s.headers["authorization"] for s in self.seen if "authorization" in s.headers]


def challenge(realm: str, service: str, scope: str) -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer realm="{realm}",service="{service}",scope="{scope}"'}


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def trusting(settings: ClientSettings, host: str, cert: Path) -> ClientSettings:
    """``settings`` that reach ``host`` over https, trusting ``cert``."""
    (settings.home / "config.toml").write_text(f'[registries."{host}"]\ninsecure = false\nca_bundle = "{cert}"\n')
    return dataclasses.replace(settings, registries=load({"HANGAR_HOME": str(settings.home)}).registries)


class Origin:
    """A model in a scratch store, for hostile registries to serve: its manifest and blobs."""

    def __init__(self, directory: Path) -> None:
        store = Store(directory).ensure()
        self.manifest = store.get(make_model(store, "origin.invalid/ns/model", os.urandom(50_000))).manifest
        self.blobs = {str(d.digest): store.blob_path(d.digest).read_bytes() for d in self.manifest.blobs()}

    def blob(self, path: str) -> bytes:
        m = re.search(r"/blobs/(sha256:[0-9a-f]{64})", path)
        return self.blobs[m.group(1)] if m else b""


def attempt(transfer: Coroutine[object, object, object]) -> errors.HangarError | None:
    """Run a pull or push; the client error it ended with, if any (checked after what the
    servers recorded, so that a test failing shows what leaked)."""
    try:
        asyncio.run(transfer)
    except errors.HangarError as e:
        return e
    return None


def ranged(data: bytes, seen: Seen) -> Reply:
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", seen.headers.get("range", ""))
    if m is None:
        return 200, {}, data
    first, last = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
    return 206, {"Content-Range": f"bytes {first}-{last}/{len(data)}"}, data[first : last + 1]


# -- the user's real registry and the victim ----------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data = tmp_path_factory.mktemp("real") / "data"
    proc = RegistryProcess(data, "", "--auth", "required", "--signup", "open").start()
    yield proc
    proc.stop()


@pytest.fixture
def alice(real: RegistryProcess, tmp_path: Path) -> Person:
    """Signed in to the real registry (only), with a private model there: ``alice/secret``."""
    person = Person(real, tmp_path / "alice", unique("alice")).signup()
    person.account.set_default_visibility(person.name, "private")
    person.push(person.model(f"{person.name}/secret"))
    return person


def relaying_registry(real: RegistryProcess, scope: str, relayed: list[httpx.Response]) -> Server:
    """Finding 11's attacker: a 401 whose service names the user's real registry and whose scope
    asks for ``scope``; the token request it gets is relayed to the real registry as finding 1
    did (the signed URL names this server, so the ``Host`` says so too)."""

    def answer(seen: Seen) -> Reply:
        port = server.port
        if seen.path.startswith("/token"):
            headers = {"Host": f"127.0.0.1:{port}"}
            if "authorization" in seen.headers:
                headers["Authorization"] = seen.headers["authorization"]
            r = httpx.get(f"{real.url}{seen.path}", headers=headers)
            relayed.append(r)
            return r.status_code, {"Content-Type": "application/json"}, r.content
        if "authorization" not in seen.headers:
            return 401, challenge(f"http://127.0.0.1:{port}/token", real.host, scope), b""
        return 404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'

    server = Server(answer)
    return server


def rights(real: RegistryProcess, owner: Person, relayed: list[httpx.Response]) -> list[int]:
    """What the relayed tokens could do to ``owner``'s private model: the statuses of a DELETE and a
    GET of its manifest with each (a 2xx would be a stolen right)."""
    statuses = []
    for r in relayed:
        if r.status_code != 200:
            continue
        token = r.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        url = f"{real.url}/v2/{owner.name}/secret/manifests/latest"
        statuses.append(httpx.delete(url, headers=auth).status_code)
        statuses.append(httpx.get(url, headers={**auth, "Accept": mt.DOCKER_MANIFEST}).status_code)
    return statuses


def access(relayed: list[httpx.Response]) -> list[object]:
    return [
        jwt.decode(r.json()["token"], options={"verify_signature": False}).get("access")
        for r in relayed
        if r.status_code == 200
    ]


# -- finding 11: what the key signs, and for whom --------------------------------------------------


def test_registry_not_signed_in_to_gets_an_anonymous_token_request(real: RegistryProcess, alice: Person) -> None:
    """alice pulls a model the attacker named like her own from the attacker's registry; its
    challenge names her real registry as the service and asks for push and delete. She never
    signed in to it: the token request carries no signature, only pull, and the attacker's own
    host as the service, and relayed to the real registry it is worth nothing."""
    relayed: list[httpx.Response] = []
    wanted = f"repository:{alice.name}/secret:pull,push,delete"
    with relaying_registry(real, wanted, relayed) as evil, pytest.raises(errors.RegistryError):
        alice.pull(ModelName.parse(f"{evil.host}/{alice.name}/secret"))
    (token_request,) = [s for s in evil.seen if s.path.startswith("/token")]
    assert "authorization" not in token_request.headers
    assert token_request.query["scope"] == [f"repository:{alice.name}/secret:pull"]
    assert token_request.query["service"] == [evil.host]
    assert access(relayed) == [[]]  # an anonymous token: nothing of alice's
    statuses = rights(real, alice, relayed)
    assert statuses and all(status in (401, 403, 404) for status in statuses)


def test_registry_signed_in_to_gets_only_the_scope_the_command_needs(real: RegistryProcess, alice: Person) -> None:
    """Even a registry alice trusts with her key (she signed in to it) gets a signed request for
    pull of what she pulls, never the push and delete its challenge asks for: relayed to her
    real registry, it deletes nothing."""
    relayed: list[httpx.Response] = []
    with relaying_registry(real, f"repository:{alice.name}/secret:pull,push,delete", relayed) as evil:
        alice.signed_in(f"http://{evil.host}")
        with pytest.raises(errors.RegistryError):
            alice.pull(ModelName.parse(f"{evil.host}/{alice.name}/secret"))
    (token_request,) = [s for s in evil.seen if s.path.startswith("/token")]
    assert token_request.headers["authorization"].startswith(alice.identity.public_key_b64 + ":")
    assert token_request.query["scope"] == [f"repository:{alice.name}/secret:pull"]
    assert token_request.query["service"] == [evil.host]
    for granted in access(relayed):
        assert all(set(entry["actions"]) <= {"pull"} for entry in granted)  # type: ignore[attr-defined]
    assert 202 not in rights(real, alice, relayed)
    r = httpx.get(f"{real.url}/v2/{alice.name}/secret/manifests/latest",
                  headers={"Authorization": f"Bearer {alice.token(f'repository:{alice.name}/secret:pull')}",
                           "Accept": mt.DOCKER_MANIFEST})  # fmt: skip
    assert r.status_code == 200  # still there


def test_challenge_for_another_repository_is_refused(real: RegistryProcess, alice: Person) -> None:
    """A challenge naming a repository the command does not touch is refused before any token
    request, signed or not, even from a registry alice signed in to."""
    relayed: list[httpx.Response] = []
    with relaying_registry(real, f"repository:{alice.name}/secret:pull,push,delete", relayed) as evil:
        alice.signed_in(f"http://{evil.host}")
        with pytest.raises(errors.UnsafeRequest, match="refusing to ask for rights"):
            alice.pull(ModelName.parse(f"{evil.host}/bait/model"))
    assert not [s for s in evil.seen if s.path.startswith("/token")]
    assert relayed == []


def test_scopes_are_cut_down_to_the_intent() -> None:
    push = ["repository:a/m:pull,push", "repository:a/base:pull"]
    assert limit_scopes("repository:a/m:pull,push,delete", push) == ["repository:a/m:pull,push"]
    assert limit_scopes("repository:a/m:* repository:a/base:pull,push", push) == [
        "repository:a/m:pull,push",
        "repository:a/base:pull",
    ]
    assert limit_scopes("repository:A/M:pull", push) == ["repository:A/M:pull"]  # names are case-insensitive
    assert limit_scopes("", ["repository:a/m:pull"]) == ["repository:a/m:pull"]
    with pytest.raises(errors.UnsafeRequest):
        limit_scopes("repository:b/m:pull registry:catalog:*", push)


def test_a_key_bound_without_signin_signs_only_where_configured(real: RegistryProcess, tmp_path: Path) -> None:
    """bob's key is on his account, but he never ran ``hangar signin`` on this machine: his pushes
    go out with anonymous token requests (refused), until he lists the registry in
    ``HANGAR_SIGN_FOR`` or marks it ``sign = true`` (Ollama's key, bound elsewhere, works that way)."""
    bob = Person(real, tmp_path / "bob", unique("bob"))
    bob.account.signup(bob.name, None, "bound elsewhere")
    name = bob.model(f"{bob.name}/model")
    with pytest.raises(errors.Unauthorized):
        bob.push(name)
    assert not (bob.settings.home / SIGNED_IN_FILE).exists()

    by_env = load({"HANGAR_HOME": str(bob.settings.home), "HANGAR_SIGN_FOR": f"other.example, {real.host}"})
    asyncio.run(push(name, bob.store, by_env))

    (bob.settings.home / "config.toml").write_text(f'[registries."{real.host}"]\nsign = true\n')
    by_config = load({"HANGAR_HOME": str(bob.settings.home)})
    assert real.host in by_config.sign_for
    asyncio.run(push(bob.model(f"{bob.name}/other"), bob.store, by_config))


def test_signin_records_the_registry_and_signout_forgets_it(real: RegistryProcess, tmp_path: Path) -> None:
    home = tmp_path / "carol"
    env = {**os.environ, "HANGAR_HOME": str(home)}
    env.pop("HANGAR_KEY", None)
    env.pop("HANGAR_SIGN_FOR", None)

    def hangar(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO_ROOT, check=True,
                       capture_output=True, timeout=120)  # fmt: skip

    hangar("signin", real.host, "--username", unique("carol"))
    assert list(signed_in(home)) == [real.host]
    hangar("signout", real.host)
    assert signed_in(home) == {}


# -- finding 15: where credentials go ------------------------------------------------------------


def token_then(serve: Callable[[Seen], Reply], realm: Callable[[], str]) -> Callable[[Seen], Reply]:
    """A registry that wants a token for everything and hands one out (``SECRET``) to anyone."""

    def answer(seen: Seen) -> Reply:
        if seen.path.startswith("/token"):
            return 200, {"Content-Type": "application/json"}, json.dumps({"token": "SECRET"}).encode()
        if seen.headers.get("authorization") != "Bearer SECRET":
            m = re.match(r"/v2/(.+?)/(?:manifests|blobs|tags|chunksums)/", seen.path)
            scope = f"repository:{m.group(1) if m else 'x/y'}:pull,push"
            return 401, challenge(realm(), "whatever", scope), b""
        return serve(seen)

    return answer


def serving(origin: Origin, blob: Callable[[Seen], Reply]) -> Callable[[Seen], Reply]:
    """Manifest and chunk sums (none) of ``origin``'s model; blob GETs go to ``blob``."""

    def answer(seen: Seen) -> Reply:
        if "/manifests/" in seen.path:
            return 200, {"Content-Type": origin.manifest.media_type}, origin.manifest.raw
        if "/blobs/" in seen.path:
            return blob(seen)
        return 404, {}, b""

    return answer


def test_https_registry_redirecting_to_plain_http_gets_no_token(tmp_path: Path, alice: Person) -> None:
    """An https registry answers a blob GET with a redirect to http:// on its own host and port:
    the client refuses to follow, so the token never crosses the network in clear."""
    cert, key = _self_signed(tmp_path)
    origin = Origin(tmp_path / "origin")

    def blob(seen: Seen) -> Reply:
        if seen.scheme == "https":
            return 307, {"Location": f"http://{registry.host}{seen.path}"}, b""
        return ranged(origin.blob(seen.path), seen)

    answer = token_then(serving(origin, blob), lambda: f"https://{registry.host}/token")
    with Server(answer, tls_context(cert, key)) as registry:
        settings = trusting(alice.settings, registry.host, cert)
        error = attempt(pull(ModelName.parse(f"{registry.host}/ns/model"), Store(tmp_path / "models"), settings))
    assert [s for s in registry.seen if s.scheme == "https" and "/blobs/" in s.path]  # it got that far
    assert [s for s in registry.seen if s.scheme == "http"] == []
    assert isinstance(error, errors.UnsafeRequest) and "plain http" in str(error)


def test_token_realm_on_plain_http_is_refused(tmp_path: Path, alice: Person) -> None:
    """An https registry alice signed in to names a realm on http:// of its own host and port:
    the signed token request would travel in clear. Refused, and nothing goes over http."""
    cert, key = _self_signed(tmp_path)
    origin = Origin(tmp_path / "origin")
    answer = token_then(
        serving(origin, lambda s: ranged(origin.blob(s.path), s)), lambda: f"http://{registry.host}/token"
    )
    with Server(answer, tls_context(cert, key)) as registry:
        alice.signed_in(f"https://{registry.host}")
        settings = trusting(alice.settings, registry.host, cert)
        error = attempt(pull(ModelName.parse(f"{registry.host}/ns/model"), Store(tmp_path / "models"), settings))
    assert [s for s in registry.seen if s.scheme == "http"] == []
    assert registry.authorizations() == []
    assert isinstance(error, errors.UnsafeRequest) and "plain http" in str(error)


def test_tags_link_to_another_host_gets_no_token(tmp_path: Path, alice: Person) -> None:
    def other_answer(seen: Seen) -> Reply:
        return 200, {"Content-Type": "application/json"}, b'{"name":"ns/model","tags":["b"]}'

    with Server(other_answer) as other:

        def tags(seen: Seen) -> Reply:
            link = f'<http://localhost:{other.port}/v2/ns/model/tags/list?last=a>; rel="next"'
            body = b'{"name":"ns/model","tags":["a"]}'
            return 200, {"Content-Type": "application/json", "Link": link}, body

        # Refusing to follow would be fine too; sending the token is not.
        with (
            Server(token_then(tags, lambda: f"http://{registry.host}/token")) as registry,
            contextlib.suppress(errors.RegistryError),
        ):
            asyncio.run(list_tags(ModelName.parse(f"{registry.host}/ns/model"), alice.settings))
    assert "Bearer SECRET" in registry.authorizations()  # the registry itself got it
    assert other.authorizations() == []


def test_upload_location_on_another_host_gets_no_token(tmp_path: Path, alice: Person) -> None:
    def other_answer(seen: Seen) -> Reply:
        if seen.method == "PATCH":
            return 202, {"Location": f"http://localhost:{other.port}/upload/1"}, b""
        return 201, {}, b""

    with Server(other_answer) as other:

        def registry_answer(seen: Seen) -> Reply:
            if seen.method == "HEAD":
                return 404, {}, b""
            if seen.method == "POST":
                return 202, {"Location": f"http://localhost:{other.port}/upload/1"}, b""
            return 201, {}, b""

        with Server(token_then(registry_answer, lambda: f"http://{registry.host}/token")) as registry:
            name = make_model(alice.store, f"{registry.host}/ns/model", os.urandom(10_000))
            with contextlib.suppress(errors.RegistryError):
                asyncio.run(push(name, alice.store, alice.settings))
    assert [s.method for s in other.seen][:1] == ["PATCH"]  # the upload went there…
    assert other.authorizations() == []  # …without the token


def test_blob_redirect_to_another_origin_is_followed_without_the_token(tmp_path: Path, alice: Person) -> None:
    """A redirect to another port of the same host is another origin (an object store beside the
    registry): followed, the bytes verified, and no token sent there."""
    origin = Origin(tmp_path / "origin")

    with Server(lambda seen: ranged(origin.blob(seen.path), seen)) as storage:

        def blob(seen: Seen) -> Reply:
            return 307, {"Location": f"http://127.0.0.1:{storage.port}{seen.path}?signature=s"}, b""

        with Server(token_then(serving(origin, blob), lambda: f"http://{registry.host}/token")) as registry:
            result = asyncio.run(
                pull(ModelName.parse(f"{registry.host}/ns/model"), Store(tmp_path / "models"), alice.settings)
            )
    assert result.model.manifest.raw == origin.manifest.raw
    assert storage.seen and storage.authorizations() == []
    assert "Bearer SECRET" in registry.authorizations()
