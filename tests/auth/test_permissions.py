"""Who may push and pull what, with real keys and tokens against a real registry."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from client import errors
from formats import mediatypes as mt
from tests.helpers import error_codes, ollama_manifest
from tests.people import accounts_of, audit_rows


def test_push_to_own_namespace_and_anonymous_pull_of_public(people, tmp_path) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    name = alice.model(f"{alice.name}/model")
    alice.push(name)
    rows = audit_rows(alice.registry, action="push", actor=alice.name, outcome="ok")
    assert [r.target for r in rows] == [f"{alice.name}/model:latest"]

    # Anyone, signed in or not, pulls a public model; no token is needed at all.
    stranger = people("stranger", signup=False)
    stranger.pull(name)
    assert stranger.store.get(name).manifest.raw == alice.store.get(name).manifest.raw
    r = httpx.get(f"{alice.registry.url}/v2/{alice.name}/model/manifests/latest")
    assert r.status_code == 200


def test_push_to_someone_elses_namespace_is_refused(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    name = bob.model(f"{alice.name}/stolen")
    with pytest.raises(errors.Denied, match="no permission"):
        bob.push(name)
    assert audit_rows(bob.registry, action="push", actor=bob.name, outcome="denied")
    # Nothing was created in alice's namespace.
    r = httpx.get(
        f"{alice.registry.url}/v2/{alice.name}/stolen/tags/list",
        headers={"Authorization": f"Bearer {alice.token(f'repository:{alice.name}/stolen:pull')}"},
    )
    assert r.status_code == 404


def test_organisation_roles(people) -> None:  # type: ignore[no-untyped-def]
    owner, writer, reader, outsider = people("owner"), people("writer"), people("reader"), people("outsider")
    org = f"org{owner.name[5:]}"
    accounts = accounts_of(owner.registry)
    accounts.create_org(org, owner.name)
    accounts.set_member(org, writer.name, "writer")
    accounts.set_member(org, reader.name, "reader")

    name = writer.model(f"{org}/model")
    writer.push(name)  # a writer pushes into the organisation
    assert audit_rows(owner.registry, action="push", actor=writer.name, target=f"{org}/model:latest")

    name_r = reader.model(f"{org}/model", tag="mine")
    with pytest.raises(errors.Denied):
        reader.push(name_r)  # a reader may not
    assert audit_rows(owner.registry, action="push", actor=reader.name, outcome="denied")

    # The owner makes it private; then readers still pull, outsiders see nothing.
    owner.account.set_visibility(f"{org}/model", "private")
    reader.pull(name)
    with pytest.raises(errors.NotFound):
        outsider.pull(name)
    with outsider.http(f"repository:{org}/model:pull") as c:
        assert error_codes(c.get(f"/v2/{org}/model/manifests/latest")) == ["NAME_UNKNOWN"]
        assert org + "/model" not in c.get("/v2/_catalog").json()["repositories"]
    with reader.http(f"repository:{org}/model:pull") as c:
        assert c.get(f"/v2/{org}/model/manifests/latest").status_code == 200
        assert org + "/model" in c.get("/v2/_catalog").json()["repositories"]
    # The owner manages members through the API too.
    owner.account.set_member(org, outsider.name, "reader")
    outsider.pull(name)


def test_private_models_are_invisible(people) -> None:  # type: ignore[no-untyped-def]
    alice, mallory = people("alice"), people("mallory")
    alice.account.set_default_visibility(alice.name, "private")
    name = alice.model(f"{alice.name}/secret")
    alice.push(name)
    repo = f"{alice.name}/secret"
    base = alice.registry.url

    # Anonymous: a challenge, exactly as for a repository that does not exist.
    for path in (f"/v2/{repo}/manifests/latest", f"/v2/{alice.name}/nothing/manifests/latest"):
        r = httpx.get(base + path)
        assert r.status_code == 401 and error_codes(r) == ["UNAUTHORIZED"]
        assert r.headers["WWW-Authenticate"].startswith(f'Bearer realm="{base}/token"')
    assert repo not in httpx.get(base + "/v2/_catalog").json()["repositories"]

    # Signed in but not allowed: 404 NAME_UNKNOWN, never a 403 that confirms it exists.
    token = mallory.token(f"repository:{repo}:pull")
    assert jwt.decode(token, options={"verify_signature": False})["access"] == []
    with mallory.http(f"repository:{repo}:pull") as c:
        for path in (f"/v2/{repo}/manifests/latest", f"/v2/{repo}/tags/list", f"/v2/{alice.name}/nothing/tags/list"):
            r = c.get(path)
            assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"], path
        assert repo not in c.get("/v2/_catalog").json()["repositories"]
    with pytest.raises(errors.NotFound):
        mallory.pull(name)

    # The owner sees and lists it.
    with alice.http(f"repository:{repo}:pull") as c:
        assert c.get(f"/v2/{repo}/tags/list").json()["tags"] == ["latest"]
        assert repo in c.get("/v2/_catalog").json()["repositories"]


def test_pull_only_token_cannot_push(people) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    repo = f"{alice.name}/model"
    alice.push(alice.model(repo))
    with alice.http(f"repository:{repo}:pull") as c:
        r = c.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 401  # refused; the challenge asks for a push token
        assert 'scope="repository:' + repo + ':pull,push"' in r.headers["WWW-Authenticate"]
        r = c.put(f"/v2/{repo}/manifests/other", content=b"{}", headers={"Content-Type": mt.DOCKER_MANIFEST})
        assert r.status_code == 401
        assert c.delete(f"/v2/{repo}/manifests/latest").status_code == 401
    # A robot with the pull scope holds no push right at all: 403.
    robot = alice.account.create_robot(alice.name, "reader", "pull", 3600)
    token = httpx.get(
        f"{alice.registry.url}/token", params={"scope": f"repository:{repo}:pull,push", "service": "x"},
        auth=(robot["username"], robot["token"]),
    ).json()["token"]  # fmt: skip
    r = httpx.post(f"{alice.registry.url}/v2/{repo}/blobs/uploads/", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and error_codes(r) == ["DENIED"]
    assert audit_rows(alice.registry, actor=f"robot:{robot['username']}", action="push", outcome="denied")


def test_tampered_and_expired_tokens(people) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    repo = f"{alice.name}/model"
    alice.push(alice.model(repo))
    token = alice.token(f"repository:{repo}:pull,push")
    header, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["access"] = [{"type": "repository", "name": "someone/else", "actions": ["pull", "push"]}]
    forged_payload = jwt.encode(claims, "an attacker-chosen key, not the registry one", algorithm="HS256").split(".")[1]
    for bad in (f"{header}.{forged_payload}.{signature}", token[:-2] + ("AA" if not token.endswith("AA") else "BB")):
        r = httpx.get(f"{alice.registry.url}/v2/{repo}/tags/list", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401 and "invalid" in r.text
    key = accounts_of(alice.registry)  # the signing key lives in the database
    from registry.meta import Metadata

    secret = Metadata(key.engine).secret("token-signing")
    expired = jwt.encode(
        {**claims, "iat": int(time.time()) - 600, "exp": int(time.time()) - 300}, secret, algorithm="HS256"
    )
    r = httpx.get(f"{alice.registry.url}/v2/{repo}/tags/list", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.text
    denied = [r.detail.get("reason", "") for r in audit_rows(alice.registry, action="auth", outcome="denied")]
    assert any("expired" in d for d in denied) and any("invalid" in d for d in denied)


def test_token_request_refusals(people, auth_registry) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    scope = f"repository:{alice.name}/model:pull"
    assert alice.token_response(scope).status_code == 200

    replay = alice.token_response(scope, nonce="fixed-nonce-" + alice.name)
    assert replay.status_code == 200
    again = alice.token_response(scope, nonce="fixed-nonce-" + alice.name)
    assert again.status_code == 401 and "nonce" in again.text

    old = alice.token_response(scope, ts=int(time.time()) - 600)
    assert old.status_code == 401 and "timestamp" in old.text

    elsewhere = alice.token_response(scope, sign_url=f"{auth_registry.url}/token?scope=repository%3Aevil%2Fx%3Apush")
    assert elsewhere.status_code == 401 and "signature" in elsewhere.text

    unknown = people("ghost", signup=False)
    r = unknown.token_response(scope)
    assert r.status_code == 401 and "unknown key" in r.text

    r = httpx.get(f"{auth_registry.url}/token", params={"scope": scope}, auth=("nobody+robot", "wrong"))
    assert r.status_code == 401

    reasons = [r.detail.get("reason", "") for r in audit_rows(auth_registry, action="auth", outcome="denied")]
    for expected in ("nonce", "timestamp", "signature", "unknown key", "robot"):
        assert any(expected in reason for reason in reasons), expected


def test_anonymous_tokens_and_the_version_check(people, auth_registry) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{auth_registry.url}/v2/")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == (
        f'Bearer realm="{auth_registry.url}/token",service="{auth_registry.host}"'
    )
    anon = httpx.get(
        f"{auth_registry.url}/token", params={"service": auth_registry.host, "scope": "repository:a/b:push"}
    )
    assert anon.status_code == 200
    body = anon.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300 and body["issued_at"].endswith("Z")
    assert jwt.decode(body["token"], options={"verify_signature": False})["access"] == []
    assert (
        httpx.get(f"{auth_registry.url}/v2/", headers={"Authorization": f"Bearer {body['token']}"}).status_code == 200
    )


def test_disabled_users_are_refused(people, auth_registry) -> None:  # type: ignore[no-untyped-def]
    eve = people("eve")
    accounts_of(auth_registry).set_disabled(eve.name, True)
    r = eve.token_response(f"repository:{eve.name}/x:pull")
    assert r.status_code == 401 and "disabled" in r.text


def test_delete_needs_permission_and_is_audited(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    repo = f"{alice.name}/model"
    alice.push(alice.model(repo, tag="v1"))
    with bob.http(f"repository:{repo}:pull,delete") as c:
        r = c.delete(f"/v2/{repo}/manifests/v1")
        assert r.status_code == 403 and error_codes(r) == ["DENIED"]
    with alice.http(f"repository:{repo}:pull,delete") as c:
        assert c.delete(f"/v2/{repo}/manifests/v1").status_code == 202
    assert audit_rows(alice.registry, action="delete", actor=alice.name, target=f"{repo}:v1", outcome="ok")
    assert audit_rows(alice.registry, action="delete", actor=bob.name, outcome="denied")


def test_manifest_push_with_wire_headers(people) -> None:  # type: ignore[no-untyped-def]
    """A push with a token for exactly the scope the challenge named."""
    alice = people("alice")
    repo = f"{alice.name}/raw"
    with httpx.Client(base_url=alice.registry.url) as c:
        r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": "sha256:" + "0" * 64}, content=b"")
        assert r.status_code == 401
        scope = r.headers["WWW-Authenticate"].split('scope="')[1].rstrip('"')
        assert scope == f"repository:{repo}:pull,push"
    with alice.http(scope) as c:
        config = b"{}"
        import hashlib

        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        assert c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=config).status_code == 201
        raw = ollama_manifest({"digest": digest, "size": 2}, [])
        assert (
            c.put(f"/v2/{repo}/manifests/latest", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST}).status_code
            == 201
        )
