"""Web accounts over plain HTTP against a real registry: sign-up with a password, sign-in and
its rate limits, sessions that end server-side, CSRF refusals, the API deaf to the session
cookie, ``hangar passwd`` and ``hangar signin --web``, organisation settings by the API's rule,
and the audit log (with no password in it, nor in the server's log)."""

from __future__ import annotations

import base64
import re
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.auth.test_signin_cli import hangar
from tests.people import Person, accounts_of, audit_rows, meta_of, unique
from tests.servers import REPO_ROOT, RegistryProcess

pytestmark = pytest.mark.timeout(300)
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data = tmp_path_factory.mktemp("web-accounts") / "data"
    proc = RegistryProcess(data, "", "--auth", "required", "--signup", "open").start()
    yield proc
    proc.stop()


class Visitor:
    """A browser without a browser: keeps cookies, reads each form's CSRF token."""

    def __init__(self, site: RegistryProcess) -> None:
        self.site = site
        self.http = httpx.Client(base_url=site.url, timeout=30, follow_redirects=False)

    def token(self, path: str) -> str:
        page = self.http.get(path)
        assert page.status_code == 200, page.text
        found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
        assert found, page.text
        return found.group(1)

    def post(self, path: str, data: dict[str, str], *, form_at: str | None = None) -> httpx.Response:
        return self.http.post(path, data={"csrf": self.token(form_at or path), **data})

    def signup(self, name: str, password: str = PASSWORD, **extra: str) -> httpx.Response:
        return self.post("/signup", {"username": name, "password": password, "password2": password, **extra})

    def signin(self, name: str, password: str = PASSWORD) -> httpx.Response:
        return self.post("/signin", {"username": name, "password": password})


def test_sign_up_sign_in_and_sign_out_end_the_session_on_the_server(site: RegistryProcess) -> None:
    name = unique("wendy")
    web = Visitor(site)
    r = web.signup(name)
    assert r.status_code == 303 and r.headers["location"] == "/settings/keys"
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("hangar_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # plain http here
    page = web.http.get("/settings/keys")
    assert page.status_code == 200 and f'href="/{name}"' in page.text
    assert "no-store" in page.headers["cache-control"]
    user = accounts_of(site).get(name)
    assert user is not None and len(accounts_of(site).sessions(user.id)) == 1

    stolen = web.http.cookies.get("hangar_session")
    assert web.post("/signout", {}, form_at="/signout").status_code == 303
    assert accounts_of(site).sessions(user.id) == []
    # The old cookie is worth nothing now, even replayed by someone who copied it.
    replay = httpx.get(site.url + "/settings/keys", cookies={"hangar_session": stolen or ""})
    assert replay.status_code == 303 and replay.headers["location"].startswith("/signin?next=")

    again = Visitor(site)
    assert again.signin(name, "wrong password!").status_code == 401
    r = again.signin(name)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert again.http.get("/settings/profile").status_code == 200

    actions = [(a.action, a.outcome) for a in audit_rows(site, actor=name) if a.detail.get("web")]
    assert ("signup", "ok") in actions and ("signout", "ok") in actions and ("signin", "ok") in actions
    assert ("signin", "denied") in [(a.action, a.outcome) for a in audit_rows(site, target=name)]
    # The password is in no audit row, nor in the server's log, nor in clear in the database.
    rows = accounts_of(site).audit_log(limit=10_000)
    assert all(PASSWORD not in str(a.detail) for a in rows)
    assert PASSWORD not in site.log_path.read_text()
    with sqlite3.connect(site.data_dir / "registry.db") as db:
        (stored,) = db.execute("SELECT password_hash FROM account WHERE key = ?", (name.lower(),)).fetchone()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_sign_out_everywhere_ends_every_session(site: RegistryProcess) -> None:
    name = unique("sam")
    phone, laptop = Visitor(site), Visitor(site)
    assert phone.signup(name).status_code == 303
    assert laptop.signin(name).status_code == 303
    r = laptop.post("/settings/signout-everywhere", {}, form_at="/settings/profile")
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    for browser in (phone, laptop):
        assert browser.http.get("/settings/profile").status_code == 303


def test_form_posts_without_the_csrf_token_are_refused(site: RegistryProcess) -> None:
    name = unique("carl")
    web = Visitor(site)
    assert web.signup(name).status_code == 303
    person = Person(site, Path(site.data_dir.parent / name), name)
    for token in (None, "0" * 64):
        data = {"key": person.identity.public_line}
        if token:
            data["csrf"] = token
        r = web.http.post("/settings/keys", data=data)
        assert r.status_code == 403 and "<h1>403</h1>" in r.text
    user = accounts_of(site).get(name)
    assert user is not None and accounts_of(site).keys(user.id) == []
    # Not even sign-in or sign-up takes a form without the token of the page that showed it.
    stranger = httpx.Client(base_url=site.url)
    assert stranger.post("/signin", data={"username": name, "password": PASSWORD}).status_code == 403
    assert stranger.post("/signup", data={"username": unique("x"), "password": PASSWORD}).status_code == 403
    # JSON or multipart bodies are no way around it.
    assert web.http.post("/settings/keys", json={"key": person.identity.public_line}).status_code == 403
    # A token from another browser's session does not fit this one.
    other = Visitor(site)
    assert other.signup(unique("olga")).status_code == 303
    theirs = other.token("/settings/keys")
    r = web.http.post("/settings/keys", data={"csrf": theirs, "key": person.identity.public_line})
    assert r.status_code == 403
    # With its own token the same post works.
    r = web.post("/settings/keys", {"key": person.identity.public_line})
    assert r.status_code == 303 and "added=SHA256" in r.headers["location"]


def test_the_api_never_takes_the_session_cookie(site: RegistryProcess) -> None:
    name = unique("ann")
    web = Visitor(site)
    assert web.signup(name).status_code == 303
    cookies = {"hangar_session": web.http.cookies.get("hangar_session") or ""}
    with httpx.Client(base_url=site.url, cookies=cookies) as api:
        assert api.post(f"/v2/{name}/m/blobs/uploads/").status_code == 401
        assert api.put(f"/hangar/v1/namespaces/{name}", json={"default_visibility": "private"}).status_code == 401
        assert api.post("/hangar/v1/password", json={"password": "x" * 20}).status_code == 401
        # The token endpoint sees an anonymous caller: a token that grants nothing.
        answer = api.get("/token", params={"service": site.host, "scope": f"repository:{name}/m:push,pull"})
        assert answer.status_code == 200
        claims = jwt.decode(answer.json()["token"], options={"verify_signature": False})
        assert claims["kind"] == "anonymous" and claims["access"] == []
    account = accounts_of(site).get(name)
    assert account is not None and account.default_visibility == "public"


def test_sign_in_is_rate_limited_per_account_and_per_address(tmp_path: Path) -> None:
    proc = RegistryProcess(tmp_path / "data", "", "--auth", "required", "--signup", "open").start()
    try:
        web = Visitor(proc)
        target, other = unique("tina"), unique("otto")
        assert web.signup(target).status_code == 303
        assert Visitor(proc).signup(other).status_code == 303
        # Sent at once, so that the buckets cannot refill between tries (each wrong one costs an
        # argon2 verification); the same form token serves every try of this visitor.
        token = web.token("/signin")

        def attempt(name: str, password: str) -> int:
            data = {"csrf": token, "username": name, "password": password}
            return web.http.post("/signin", data=data).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(attempt, [target] * 14, [f"guess {i}" for i in range(14)]))
        assert sorted(set(codes)) == [401, 429] and 10 <= codes.count(401) <= 11, codes
        assert attempt(target, PASSWORD) == 429  # even the right password, for now
        assert Visitor(proc).signin(other).status_code == 303  # another account, the same address
        # Per address: 30 a minute whatever the names.
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(attempt, [unique("n") for _ in range(30)], ["whatever it is"] * 30))
        assert sorted(set(codes)) == [401, 429] and codes.count(429) >= 5, codes
        refused = [a for a in audit_rows(proc, action="signin") if a.detail.get("reason") == "too many attempts"]
        assert refused
    finally:
        proc.stop()


def test_hangar_passwd_sets_the_web_password_of_a_cli_account(site: RegistryProcess, tmp_path: Path) -> None:
    name = unique("pat")
    hangar(tmp_path, "signin", site.host, "--username", name)

    def passwd(password: str) -> subprocess.CompletedProcess[str]:
        env = {"HANGAR_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "passwd", site.host, "--password-stdin"], input=password + "\n",
            env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
        )  # fmt: skip

    short = passwd("short")
    assert short.returncode != 0 and "at least 10 characters" in short.stderr + short.stdout
    done = passwd(PASSWORD)
    assert done.returncode == 0, done.stderr
    assert f"Password set for '{name}'" in done.stdout and f"{site.url}/signin" in done.stdout
    assert Visitor(site).signin(name).status_code == 303
    rows = audit_rows(site, actor=name, action="password")
    assert [r.outcome for r in rows] == ["ok", "denied"]  # newest first: the short one was refused
    assert all(PASSWORD not in str(r.detail) for r in rows)

    # A one-time sign-in link: a GET only shows a button; the POST signs in, once.
    out = hangar(tmp_path, "signin", site.host, "--web").stdout
    link = re.search(r"(http://\S+/signin/link/\S+)", out)
    assert link, out
    path = link.group(1).removeprefix(site.url)
    web = Visitor(site)
    assert web.http.get(path).status_code == 200
    r = web.post(path, {})
    assert r.status_code == 303 and web.http.get("/settings/profile").status_code == 200
    assert Visitor(site).post(path, {}).status_code == 400  # used up


def test_organisation_settings_follow_the_api_rule(site: RegistryProcess) -> None:
    owner, writer = unique("olive"), unique("walt")
    web_owner, web_writer = Visitor(site), Visitor(site)
    assert web_owner.signup(owner).status_code == 303
    assert web_writer.signup(writer).status_code == 303
    org = unique("team")
    accounts_of(site).create_org(org, owner)
    accounts_of(site).set_member(org, writer, "writer")
    # A writer may push to the organisation but not change its settings: the API says 403.
    assert web_writer.http.get(f"/settings/orgs/{org}").status_code == 404
    r = web_writer.http.post(f"/settings/orgs/{org}", data={"csrf": web_writer.token("/settings/keys"),
                             "action": "visibility", "default_visibility": "private"})  # fmt: skip
    assert r.status_code == 404
    account = accounts_of(site).get(org)
    assert account is not None and account.default_visibility == "public"
    # The owner may.
    r = web_owner.post(f"/settings/orgs/{org}", {"action": "visibility", "default_visibility": "private"})
    assert r.status_code == 303
    r = web_owner.post(f"/settings/orgs/{org}", {"action": "member", "username": writer, "role": "reader"})
    assert r.status_code == 303
    account = accounts_of(site).get(org)
    assert account is not None and account.default_visibility == "private"
    assert accounts_of(site).members(org)[writer] == "reader"
    r = web_owner.post(f"/settings/orgs/{org}", {"action": "member", "username": writer, "role": "boss"})
    assert r.status_code == 400 and "role must be one of" in r.text


def test_invite_only_sign_up_asks_for_an_invite(tmp_path: Path) -> None:
    proc = RegistryProcess(tmp_path / "data", "", "--auth", "required", "--signup", "invite").start()
    try:
        web = Visitor(proc)
        assert 'name="invite"' in web.http.get("/signup").text
        r = web.signup(unique("ivy"))
        assert r.status_code == 400 and "invite code" in r.text
        code = accounts_of(proc).create_invite()
        name = unique("ivy")
        assert web.signup(name, invite=code).status_code == 303
        assert accounts_of(proc).get(name) is not None
        r = Visitor(proc).signup(unique("ivo"), invite=code)
        assert r.status_code == 400 and "unknown, used or expired" in r.text
    finally:
        proc.stop()


def test_model_settings_follow_the_api_rules(site: RegistryProcess, tmp_path: Path) -> None:
    owner = Person(site, tmp_path / "owner", unique("mo")).signup()
    reader = unique("rita")
    accounts = accounts_of(site)
    owner_account = accounts.get(owner.name)
    assert owner_account is not None
    accounts.set_password(owner_account.id, PASSWORD)
    org = unique("crew")
    accounts.create_org(org, owner.name)
    for tag in ("latest", "old"):
        owner.push(owner.model(f"{org}/m", tag, size=1000))
    web_owner, web_reader, stranger = Visitor(site), Visitor(site), Visitor(site)
    assert web_owner.signin(owner.name).status_code == 303
    assert web_reader.signup(reader).status_code == 303
    assert stranger.signup(unique("stan")).status_code == 303
    accounts.set_member(org, reader, "reader")
    page = f"/settings/models/{org}/m"

    # A reader may pull but neither manage nor delete (the API: 403 for both); a stranger sees it
    # only while it is public.
    assert web_reader.http.get(page).status_code == 403
    assert stranger.http.get(page).status_code == 403
    r = web_reader.http.post(page, data={"csrf": web_reader.token("/settings/keys"), "action": "delete_tag",
                             "tag": "old"})  # fmt: skip
    assert r.status_code == 403
    assert {t.name for t in meta_of(site).model_tags(f"{org}/m")} == {"latest", "old"}

    assert web_owner.post(page, {"action": "visibility", "visibility": "private"}).status_code == 303
    assert meta_of(site).repository_visibility(f"{org}/m") == "private"
    assert stranger.http.get(page).status_code == 404  # private: as if it did not exist
    assert web_owner.post(page, {"action": "delete_tag", "tag": "old"}).status_code == 303
    assert {t.name for t in meta_of(site).model_tags(f"{org}/m")} == {"latest"}
    r = web_owner.post(page, {"action": "delete_model", "confirm": "wrong"})
    assert r.status_code == 400 and "to confirm" in r.text
    r = web_owner.post(page, {"action": "delete_model", "confirm": f"{org}/m"})
    assert r.status_code == 303 and r.headers["location"] == f"/{org}"
    assert meta_of(site).model_tags(f"{org}/m") == []
    kinds = [(a.target, a.detail.get("kind")) for a in audit_rows(site, actor=owner.name, action="delete")]
    assert (f"{org}/m", "model") in kinds and (f"{org}/m:old", "tag") in kinds


def test_the_model_page_description_and_readme_set_on_the_web(site: RegistryProcess, tmp_path: Path) -> None:
    """The model's settings set the description and README the site shows for the whole model
    (listings, search and the model page), instead of what its head manifest carries; the README
    renders inert; clearing them brings back the model's own; who may not manage it cannot."""
    owner = Person(site, tmp_path / "owner", unique("pg")).signup()
    accounts = accounts_of(site)
    account = accounts.get(owner.name)
    assert account is not None
    accounts.set_password(account.id, PASSWORD)
    owner.push(owner.model(f"{owner.name}/paged", "latest", size=1000))
    web, stranger = Visitor(site), Visitor(site)
    assert web.signin(owner.name).status_code == 303
    assert stranger.signup(unique("sg")).status_code == 303
    page = f"/settings/models/{owner.name}/paged"
    word = unique("zebrafinch")
    readme = f"# Paged model\n\nA {word} of a README.\n\n<script>alert(1)</script>"
    assert web.post(page, {"action": "page", "description": f"finds the {word}", "readme": readme}).status_code == 303

    model_page = web.http.get(f"/{owner.name}/paged")
    assert "<h1" in model_page.text and "Paged model" in model_page.text and word in model_page.text
    assert "<script>alert(1)</script>" not in model_page.text  # rendered inert, as every README
    found = httpx.get(f"{site.url}/api/search", params={"q": word}).json()
    assert [m["name"] for m in found["models"]] == [f"{owner.name}/paged"], found
    assert found["models"][0]["description"] == f"finds the {word}"

    # Someone who may not manage the model gets 403, and nothing changes.
    r = stranger.http.post(page, data={"csrf": stranger.token("/settings/keys"), "action": "page", "readme": "x"})
    assert r.status_code == 403
    assert meta_of(site).repository_page(f"{owner.name}/paged") == (f"finds the {word}", readme)
    too_long = web.post(page, {"action": "page", "description": "", "readme": "x" * (257 * 1024)})
    assert too_long.status_code == 400 and "at most 256 KiB" in too_long.text

    # Cleared: the model's own (none here) again, and search no longer finds the word.
    assert web.post(page, {"action": "page", "description": "", "readme": ""}).status_code == 303
    assert word not in web.http.get(f"/{owner.name}/paged").text
    assert httpx.get(f"{site.url}/api/search", params={"q": word}).json()["models"] == []
    assert [a.target for a in audit_rows(site, actor=owner.name, action="page")] == [f"{owner.name}/paged"] * 2


def test_the_session_cookie_is_secure_over_https(tmp_path: Path) -> None:
    from tests.client.test_errors import _self_signed

    cert, key = _self_signed(tmp_path)
    proc = RegistryProcess(
        tmp_path / "data", "", "--auth", "required", "--signup", "open", "--ssl-certfile", str(cert),
        "--ssl-keyfile", str(key),
    ).start()  # fmt: skip
    try:
        web = Visitor(proc)
        web.http = httpx.Client(base_url=proc.url, timeout=30, verify=ssl.create_default_context(cafile=str(cert)))
        page = web.http.get("/signin")
        csrf_cookie = page.headers["set-cookie"]
        assert csrf_cookie.startswith("hangar_csrf=") and "Secure" in csrf_cookie and "HttpOnly" in csrf_cookie
        r = web.signup(unique("tess"))
        cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("hangar_session="))
        assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    finally:
        proc.stop()


def test_every_account_page_is_a_reserved_name() -> None:
    from registry.accounts import RESERVED_NAMES
    from registry.web.account_pages import routes

    first = {route.path.strip("/").split("/")[0] for route in routes}
    assert first == {"signup", "signin", "signout", "connect", "settings"}
    assert first <= RESERVED_NAMES


def test_keys_robots_and_connect_links_on_the_web(site: RegistryProcess, tmp_path: Path) -> None:
    name = unique("kim")
    web = Visitor(site)
    assert web.signup(name).status_code == 303
    laptop = Person(site, tmp_path / "laptop", name)

    # A pasted line with its comment: the comment names the key; garbage is refused with a reason.
    r = web.post("/settings/keys", {"key": laptop.identity.public_line + " kim@laptop"})
    assert r.status_code == 303
    assert "kim@laptop" in web.http.get("/settings/keys").text
    r = web.post("/settings/keys", {"key": "ssh-rsa AAAAB3NzaC1yc2E kim@old"})
    assert r.status_code == 303 and "error=" in r.headers["location"]
    assert "not an ssh-ed25519 public key" in web.http.get(r.headers["location"]).text
    r = web.post("/settings/keys", {"key": laptop.identity.public_line})  # twice: taken
    assert "already+belongs" in r.headers["location"]

    # The key works for a token right away, and not once removed.
    def pushes(person: Person) -> list[Any]:
        answer = person.token_response(f"repository:{name}/m:push")
        if answer.status_code != 200:
            return []
        return list(jwt.decode(answer.json()["token"], options={"verify_signature": False})["access"])

    assert pushes(laptop) == [{"type": "repository", "name": f"{name}/m", "actions": ["push"]}]
    r = web.post("/settings/keys/remove", {"fingerprint": laptop.identity.fingerprint}, form_at="/settings/keys")
    assert r.status_code == 303
    assert pushes(laptop) == []

    # A robot made on the web: its token is shown once and works with HTTP Basic at /token.
    r = web.post("/settings/robots", {"namespace": name, "name": "ci", "scope": "push", "days": "7"})
    assert r.status_code == 200
    token = re.search(r'value="(hgr_[^"]+)" data-token', r.text)
    assert token, r.text
    basic = httpx.get(
        site.url + "/token", params={"service": site.host, "scope": f"repository:{name}/m:push,pull"},
        auth=(f"{name}+ci", token.group(1)),
    )  # fmt: skip
    assert basic.status_code == 200
    access = jwt.decode(basic.json()["token"], options={"verify_signature": False})["access"]
    assert {"pull", "push"} <= set(access[0]["actions"])
    assert token.group(1) not in web.http.get("/settings/robots").text  # shown once only
    r = web.post("/settings/robots", {"namespace": unique("someone"), "name": "ci", "scope": "pull", "days": "7"})
    assert r.status_code == 303 and "error=" in r.headers["location"]
    r = web.post("/settings/robots/remove", {"namespace": name, "name": "ci"}, form_at="/settings/robots")
    assert r.status_code == 303
    assert accounts_of(site).robots(name) == []

    # Connect links: a broken one says so; a key of another account is not taken over.
    assert web.http.get("/connect?name=box&key=%%%").status_code == 400
    other = Person(site, tmp_path / "other", unique("oz")).signup()
    key = base64.urlsafe_b64encode(other.identity.public_line.encode()).decode().rstrip("=")
    r = web.http.get(f"/connect?name=box&key={key}")
    assert r.status_code == 409 and "belongs to another account" in r.text
    r = web.http.post("/connect", data={"csrf": web.token("/settings/keys"), "name": "box", "key": key})
    assert r.status_code == 409
    other_account = accounts_of(site).get(other.name)
    assert other_account is not None and len(accounts_of(site).keys(other_account.id)) == 1
    # Signed out, the link leads to sign-in and back.
    r = httpx.get(site.url + f"/connect?name=box&key={key}")
    assert r.status_code == 303 and r.headers["location"].startswith("/signin?next=%2Fconnect%3Fname%3Dbox")
