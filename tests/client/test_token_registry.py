"""Docker's token flow against the reference registry itself (#20): Debian's ``docker-registry``
with ``auth: token``, trusting a token issuer written here (ES256 JWTs with an x5c chain, the
``access`` claim distribution checks). ``hangar login`` then push and pull; a scope the issuer
does not grant is a clear refusal; a wrong password names the registry."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import errors
from tests.client.test_login import hangar, round_trip, settings_of
from tests.security.test_client_credentials import Reply, Seen, Server
from tests.servers import ReferenceRegistry

USER, PASSWORD = "carol", "t0ken-Pa55"
SERVICE, ISSUER = "reference-registry", "hangar-test-issuer"


class Issuer:
    """A token server as Docker Hub's auth.docker.io: Basic credentials in, a signed JWT out, with
    pull and push on the user's own namespace and pull elsewhere."""

    def __init__(self, directory: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.bundle = directory / "issuer.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.issued: list[list[dict[str, object]]] = []
        self.server = Server(self.answer)

    def answer(self, seen: Seen) -> Reply:
        good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if seen.headers.get("authorization") != good:
            return 401, {"Content-Type": "application/json"}, b'{"details":"incorrect username or password"}'
        access = []
        for scope in seen.query.get("scope", []):
            kind, repository, actions = scope.split(":")
            wanted = actions.split(",")
            allowed = wanted if repository.startswith(f"{USER}/") else [a for a in wanted if a == "pull"]
            access.append({"type": kind, "name": repository, "actions": allowed})
        self.issued.append(access)
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": USER, "aud": seen.query["service"][0], "exp": now + 300, "nbf": now - 10,
            "iat": now, "jti": uuid.uuid4().hex, "access": access,
        }  # fmt: skip
        x5c = [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]
        token = jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": x5c})
        issued_at = dt.datetime.now(dt.UTC).isoformat()
        body = {"token": token, "access_token": token, "expires_in": 300, "issued_at": issued_at}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


class TokenRegistry(ReferenceRegistry):
    """The reference registry with ``auth: token`` trusting ``issuer``."""

    ready_status = 401

    def __init__(self, root: Path, issuer: Issuer) -> None:
        super().__init__(root)
        with self.config.open("a") as f:
            f.write(
                f"auth:\n  token:\n    realm: http://{issuer.server.host}/token\n    service: {SERVICE}\n"
                f"    issuer: {ISSUER}\n    rootcertbundle: {issuer.bundle}\n"
            )


@pytest.fixture(scope="module")
def token_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Issuer, TokenRegistry]]:
    root = tmp_path_factory.mktemp("token-registry")
    issuer = Issuer(root)
    with issuer.server:
        registry = TokenRegistry(root / "registry", issuer).start()
        yield issuer, registry
        registry.stop()


def test_login_push_and_pull_through_a_real_token_issuer(token_setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    issuer, registry = token_setup
    home = tmp_path / "home"
    done = hangar(home, "login", registry.host, "-u", USER, "--password-stdin", stdin=PASSWORD)
    assert done.returncode == 0, done.stderr
    issued_before = len(issuer.issued)
    round_trip(home, registry.host, f"{USER}/model", tmp_path)
    # The registry checked real JWTs: push and pull tokens were issued for exactly this repository.
    scopes = [entry for access in issuer.issued[issued_before:] for entry in access]
    assert {"type": "repository", "name": f"{USER}/model", "actions": ["pull", "push"]} in scopes
    assert all(entry["name"] == f"{USER}/model" for entry in scopes)
    # The password went to the issuer only, never to the registry.
    log = (registry.root / "log").read_text(errors="replace")
    assert PASSWORD not in log


def test_a_scope_the_issuer_does_not_grant_is_refused(token_setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from client.push import push
    from client.store import Store
    from tests.client.conftest import make_model

    _, registry = token_setup
    home = tmp_path / "home"
    assert hangar(home, "login", registry.host, "-u", USER, "--password-stdin", stdin=PASSWORD).returncode == 0
    settings = settings_of(home)
    store = Store(settings.models).ensure()
    name = make_model(store, f"{registry.host}/someone-else/model", os.urandom(1000))
    with pytest.raises(errors.Denied) as raised:
        asyncio.run(push(name, store, settings))
    message = str(raised.value)
    assert registry.host in message and f"'{USER}' (logged in, from" in message
    assert "repository:someone-else/model:pull,push" in message and "hangar signin" not in message


def test_a_wrong_password_names_the_registry(token_setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, registry = token_setup
    done = hangar(tmp_path / "home", "login", registry.host, "-u", USER, "--password-stdin", stdin="wrong")
    assert done.returncode == 1
    assert registry.host in done.stderr and "carol" in done.stderr
    assert "Traceback" not in done.stderr
