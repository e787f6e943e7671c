"""Registry hardening (issue #19: findings 7-10, the read-in-code items and two unguarded guards):
each test makes the attack against a real registry process and checks that it is refused."""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from registry.accounts import MAX_PENDING_KEYS
from registry.api.common import SIGNED_URL_RECHECK_SECONDS
from registry.models import Account, PendingKey
from registry.ratelimit import AUDIT_REFUSALS_PER_MINUTE
from tests.helpers import digest_of, error_codes, push_blob
from tests.people import Person, accounts_of, audit_rows, meta_of, unique
from tests.servers import REPO_ROOT, RegistryProcess


@pytest.fixture
def start(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """``start(*args)``: a registry on SQLite with authentication on (unless args say otherwise)."""
    started: list[RegistryProcess] = []

    def make(*args: str) -> RegistryProcess:
        args = args if "--auth" in args else ("--auth", "required", *args)
        proc = RegistryProcess(tmp_path / f"data{len(started)}", "", *args)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


def person(registry: RegistryProcess, tmp_path: Path, prefix: str, *, signup: bool = True) -> Person:
    name = unique(prefix)
    someone = Person(registry, tmp_path / name, name)
    return someone.signup() if signup else someone


def signed_location(client: httpx.Client, repo: str, digest: str) -> str:
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=0-0"})
    assert r.status_code == 206, r.text
    return r.headers["Location"]


# -- 7. reserved names -----------------------------------------------------------------------------


def test_reserved_names_are_refused_at_signup(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = start("--signup", "open")
    for name in ("library", "Library", "search", "settings", "signin", "api", "v2", "static"):
        squatter = Person(registry, tmp_path / unique("squatter"), name)
        answer = squatter.account.call("POST", "/hangar/v1/signup", {"username": name})
        assert answer.status == 403 and "reserved" in answer.body["error"], (name, answer)
    assert accounts_of(registry).get("library") is None
    assert len(audit_rows(registry, action="signup", outcome="denied")) >= 8


def _admin(registry_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "registry", "admin", *args, "--data-dir", str(registry_dir)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip


def test_admin_cli_refuses_reserved_names_but_library_on_request(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for args in (("org", "create", "library"), ("user", "create", "LIBRARY"), ("org", "create", "settings")):
        refused = _admin(data, *args)
        assert refused.returncode == 1 and "reserved" in refused.stderr, refused
        assert "Traceback" not in refused.stderr
    # Only "library" can be claimed, and only explicitly: the web site's names never.
    refused = _admin(data, "org", "create", "search", "--allow-library")
    assert refused.returncode == 1 and "reserved" in refused.stderr
    made = _admin(data, "org", "create", "library", "--allow-library")
    assert made.returncode == 0 and "created organisation library" in made.stdout, made


# -- 8. signed blob URLs follow access, and expire --------------------------------------------------


def test_signed_url_closes_when_the_repository_goes_private(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = start("--signup", "open")
    alice = person(registry, tmp_path, "alice")
    repo = f"{alice.name}/model"
    with alice.http(f"repository:{repo}:pull,push") as c:
        digest = push_blob(c, repo, os.urandom(5000))["digest"]
    # Anyone may read the public repository, and gets a URL that needs no credentials.
    with httpx.Client(base_url=registry.url) as anonymous:
        location = signed_location(anonymous, repo, digest)
    assert httpx.get(location).status_code == 200
    meta_of(registry).set_repository_visibility(repo, "private")
    time.sleep(SIGNED_URL_RECHECK_SECONDS + 0.5)
    r = httpx.get(location, headers={"Range": "bytes=0-99"})
    assert r.status_code == 403 and error_codes(r) == ["DENIED"]
    rows = audit_rows(registry, action="signed-url", outcome="denied")
    assert any("no longer" in r.detail.get("reason", "") for r in rows)
    # The owner's own URL still works: it is bound to alice, who may read it.
    with alice.http(f"repository:{repo}:pull") as c:
        assert httpx.get(signed_location(c, repo, digest)).status_code == 200


def test_signed_url_closes_when_a_member_is_removed(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = start("--signup", "open")
    owner, reader = person(registry, tmp_path, "owner"), person(registry, tmp_path, "reader")
    org = unique("org")
    accounts = accounts_of(registry)
    accounts.create_org(org, owner.name)
    accounts.set_member(org, reader.name, "reader")
    repo = f"{org}/model"
    with owner.http(f"repository:{repo}:pull,push") as c:
        digest = push_blob(c, repo, os.urandom(5000))["digest"]
    meta_of(registry).set_repository_visibility(repo, "private")
    with reader.http(f"repository:{repo}:pull") as c:
        location = signed_location(c, repo, digest)
        chunks = c.get(f"/v2/{repo}/chunksums/{digest}").headers["Content-Location"]
    assert httpx.get(location).status_code == 200 and httpx.get(chunks).status_code == 200
    accounts.remove_member(org, reader.name)
    time.sleep(SIGNED_URL_RECHECK_SECONDS + 0.5)
    assert httpx.get(location).status_code == 403
    assert httpx.get(chunks).status_code == 403


def test_signed_urls_expire(start) -> None:  # type: ignore[no-untyped-def]
    """Guard: a signed URL stops working after --signed-url-ttl (waited out, not edited)."""
    registry = start("--auth", "off", "--signed-url-ttl", "2")
    repo = f"{unique('t')}/model"
    with httpx.Client(base_url=registry.url) as c:
        digest = push_blob(c, repo, os.urandom(5000))["digest"]
        location = signed_location(c, repo, digest)
        chunks = c.get(f"/v2/{repo}/chunksums/{digest}").headers["Content-Location"]
    assert httpx.get(location).status_code == 200 and httpx.get(chunks).status_code == 200
    time.sleep(3.5)
    for url in (location, chunks):
        r = httpx.get(url, headers={"Range": "bytes=0-9"})
        assert r.status_code == 403 and error_codes(r) == ["DENIED"], url


# -- 9. no credentials in the access log --------------------------------------------------------------


def test_access_log_holds_no_signed_url_or_token_query(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = start("--signup", "open", "--log-level", "info")
    alice = person(registry, tmp_path, "alice")
    repo = f"{alice.name}/model"
    with alice.http(f"repository:{repo}:pull,push") as c:
        digest = push_blob(c, repo, os.urandom(5000))["digest"]
        location = signed_location(c, repo, digest)
    assert httpx.get(location).status_code == 200  # the fetch whose line would hold the signature
    time.sleep(0.5)
    log = registry.log()
    assert f"/v2/{repo}/blobs/{digest.replace(':', '%3A')}?[redacted]" in log, log[-3000:]
    assert "/token?[redacted]" in log and "/hangar/v1/signup?[redacted]" in log
    for secret in ("signature=", "nonce=", "expires=", location.split("signature=")[1][:20]):
        assert secret not in log, secret


# -- 10. refusals are audited (and throttled); sign-in does not tell who exists --------------------


def test_refusals_are_audited(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = start("--signup", "open")
    alice, bob, eve = (person(registry, tmp_path, n) for n in ("alice", "bob", "eve"))
    stranger = person(registry, tmp_path, "stranger", signup=False)

    # An unbound key asks for a robot.
    answer = stranger.account.call("POST", "/hangar/v1/robots", {"namespace": alice.name, "name": "ci"})
    assert answer.status == 401
    rows = audit_rows(registry, action="robot.create", outcome="denied")
    assert any(r.detail.get("key") == stranger.identity.fingerprint for r in rows), rows

    # A disabled user asks who they are.
    accounts_of(registry).set_disabled(eve.name, True)
    assert eve.account.call("GET", "/hangar/v1/me").status == 403
    assert audit_rows(registry, action="me", actor=eve.name, outcome="denied")

    # Bob reads alice's private repository.
    repo = f"{alice.name}/secret"
    with alice.http(f"repository:{repo}:pull,push") as c:
        digest = push_blob(c, repo, os.urandom(1000))["digest"]
    meta_of(registry).set_repository_visibility(repo, "private")
    with bob.http(f"repository:{repo}:pull") as c:
        r = c.get(f"/v2/{repo}/blobs/{digest}")
        assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]
    assert audit_rows(registry, action="pull", actor=bob.name, target=repo, outcome="denied")

    # A forged signed URL.
    forged = f"{registry.url}/v2/{repo}/blobs/{digest}?expires={int(time.time()) + 600}&signature=forged"
    assert httpx.get(forged).status_code == 403
    assert audit_rows(registry, action="signed-url", target=f"/v2/{repo}/blobs/{digest}", outcome="denied")

    # Sign-in to a user who does not exist.
    ghost = unique("ghost")
    assert stranger.account.call("POST", "/hangar/v1/signin", {"username": ghost}).status == 202
    assert audit_rows(registry, action="signin", target=ghost, outcome="denied")


def test_refusals_cannot_flood_the_audit_log(start) -> None:  # type: ignore[no-untyped-def]
    registry = start()
    url = f"{registry.url}/v2/someone/model/blobs/{digest_of(b'x')}"
    with httpx.Client() as c:
        for i in range(AUDIT_REFUSALS_PER_MINUTE + 40):
            r = c.get(url, params={"expires": str(int(time.time()) + 600), "signature": f"forged{i}"})
            assert r.status_code == 403
    rows = audit_rows(registry, action="signed-url", outcome="denied")
    assert len(rows) == AUDIT_REFUSALS_PER_MINUTE + 1, len(rows)  # then one summary row, then silence
    assert sum("throttled" in r.detail for r in rows) == 1


def _signin(someone: Person, username: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    answer = someone.account.call("POST", "/hangar/v1/signin", {"username": username, "key_name": "k"})
    return answer.status, answer.body


def test_signin_does_not_tell_whether_a_user_exists(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = start("--signup", "invite")
    accounts = accounts_of(registry)
    alice = person(registry, tmp_path, "alice", signup=False)
    alice.account.signup(alice.name, accounts.create_invite(), "laptop")
    disabled = person(registry, tmp_path, "dora", signup=False)
    disabled.account.signup(disabled.name, accounts.create_invite(), "laptop")
    accounts.set_disabled(disabled.name, True)
    prober = person(registry, tmp_path, "prober", signup=False)

    answers = {name: _signin(prober, name) for name in (alice.name, unique("nobody"), disabled.name)}
    shapes = {
        (status, tuple(sorted(body)), body["status"], re.sub(r"'[^']*'|\w{4}-\w{4}", "…", body["message"]))
        for status, body in answers.values()
    }
    assert len(shapes) == 1, answers  # the same status, fields and message for all three
    status, body = answers[alice.name]
    assert status == 202 and re.fullmatch(r"\w{4}-\w{4}", body["code"])
    # Asking again gives the same code for every name, as a real pending request does.
    for name, (_, first) in answers.items():
        assert _signin(prober, name)[1]["code"] == first["code"]
    # Only the real user's code can be approved, by that user.
    assert alice.account.call("POST", "/hangar/v1/keys/approve", {"code": answers[alice.name][1]["code"]}).status == 200


def test_pending_key_requests_are_capped(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = start("--signup", "open")
    alice = person(registry, tmp_path, "alice")
    codes = [_signin(person(registry, tmp_path, "asker", signup=False), alice.name)[1]["code"] for _ in range(15)]
    engine = accounts_of(registry).engine
    with engine.connect() as conn:
        account_id = conn.execute(select(Account.id).where(Account.key == alice.name.lower())).scalar_one()
        pending = conn.execute(
            select(func.count()).select_from(PendingKey).where(PendingKey.account_id == account_id)
        ).scalar_one()
    assert pending == MAX_PENDING_KEYS
    # The newest request survives and can be approved; the oldest is gone.
    approve = alice.account.call
    assert approve("POST", "/hangar/v1/keys/approve", {"code": codes[-1]}).status == 200
    assert approve("POST", "/hangar/v1/keys/approve", {"code": codes[0]}).status == 404


# -- read in code: invites, closed sign-up, rate limits, nonces ----------------------------------------


def test_an_invite_code_signs_up_one_account_under_concurrency(make_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry("--auth", "required", "--signup", "invite")
    accounts = accounts_of(registry)
    for _ in range(3):
        code = accounts.create_invite()
        racers = [person(registry, tmp_path, "racer", signup=False) for _ in range(8)]
        barrier = threading.Barrier(len(racers))

        def sign_up(someone: Person, code: str = code, barrier: threading.Barrier = barrier) -> int:
            barrier.wait()
            body = {"username": someone.name, "invite": code, "key_name": "k"}
            return someone.account.call("POST", "/hangar/v1/signup", body).status

        with concurrent.futures.ThreadPoolExecutor(len(racers)) as pool:
            statuses = list(pool.map(sign_up, racers))
        assert statuses.count(201) == 1, statuses
        assert sum(accounts.get(r.name) is not None for r in racers) == 1


def test_closed_signup_refuses_invite_codes(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = start("--signup", "closed")
    code = accounts_of(registry).create_invite()
    someone = person(registry, tmp_path, "gina", signup=False)
    answer = someone.account.call("POST", "/hangar/v1/signup", {"username": someone.name, "invite": code})
    assert answer.status == 403 and "closed" in answer.body["error"]
    assert accounts_of(registry).get(someone.name) is None


def test_token_and_account_api_are_rate_limited(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = start("--signup", "open", "--rate-limit", "5")
    someone = person(registry, tmp_path, "rita", signup=False)
    statuses = [httpx.get(f"{registry.url}/token", params={"service": registry.host}).status_code for _ in range(5)]
    assert statuses == [200] * 5
    r = httpx.get(f"{registry.url}/token", params={"service": registry.host})
    assert r.status_code == 429 and error_codes(r) == ["TOOMANYREQUESTS"]
    assert 1 <= int(r.headers["Retry-After"]) <= 12  # one request's worth at 5 a minute
    answer = someone.account.call("POST", "/hangar/v1/signup", {"username": someone.name})
    assert answer.status == 429 and "too many" in answer.body["error"]
    assert httpx.get(f"{registry.url}/v2/").status_code == 401  # the OCI API itself is not limited
    assert audit_rows(registry, action="ratelimit", outcome="denied")


def test_a_bad_signature_does_not_spend_a_nonce(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Guard: nonces are stored only for verified signatures (else anyone could burn them)."""
    registry = start("--signup", "open")
    alice = person(registry, tmp_path, "alice")
    scope = f"repository:{alice.name}/m:pull"
    nonce = "fixed-nonce-" + unique("")
    bad = alice.token_response(scope, nonce=nonce, sign_url="http://elsewhere.example/token")
    assert bad.status_code == 401
    assert alice.token_response(scope, nonce=nonce).status_code == 200
    with accounts_of(registry).engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM nonce WHERE value = :v"), {"v": nonce}).scalar_one() == 1


# -- guard: cross-repository mounts need read access to the source --------------------------------------


def test_mount_from_a_private_repository_is_refused(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = start("--signup", "open")
    alice, bob = person(registry, tmp_path, "alice"), person(registry, tmp_path, "bob")
    private, theirs, copy = f"{alice.name}/private", f"{bob.name}/own", f"{bob.name}/copy"
    with alice.http(f"repository:{private}:pull,push") as c:
        secret = push_blob(c, private, os.urandom(3000))["digest"]
    meta_of(registry).set_repository_visibility(private, "private")
    with bob.http(f"repository:{theirs}:pull,push", f"repository:{copy}:pull,push") as c:
        # Mounting works between bob's own repositories (so the refusal below is about access).
        mine = push_blob(c, theirs, os.urandom(3000))["digest"]
        r = c.post(f"/v2/{copy}/blobs/uploads/", params={"mount": mine, "from": theirs})
        assert r.status_code == 201, r.text
        r = c.post(f"/v2/{copy}/blobs/uploads/", params={"mount": secret, "from": private})
        assert r.status_code == 202, r.text  # an upload session: nothing mounted
        assert c.get(f"/v2/{copy}/blobs/{secret}").status_code == 404
        assert c.head(f"/v2/{copy}/blobs/{secret}").status_code == 404
