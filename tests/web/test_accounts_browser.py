"""Accounts in a real headless Chromium (Debian's, driven by Selenium): Ollama's sharing flow
(sign up on the web, paste a public key at /settings/keys, push with that key, see the tag),
the connect-URL flow of ``hangar signin``, a form without its CSRF token refused, sign-out
ending the session on the server, a private model visible to a signed-in member only, and
axe-core (vendored: tests/web/axe.min.js, MPL-2.0) finding no serious or critical violation on
any account page."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ollama_wire import OllamaWireClient
from tests.people import Person, accounts_of, audit_rows, meta_of, unique
from tests.registry.test_ollama_wire import model
from tests.servers import REPO_ROOT, RegistryProcess
from tests.web.conftest import publish, screenshot_dir

pytestmark = pytest.mark.timeout(300)
PASSWORD = "a long web password"
AXE = (Path(__file__).parent / "axe.min.js").read_text()
# What the check fails on: axe's two worst impact levels (WCAG 2 A and AA rules, best practices).
AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ["violations"]}).then(
  r => done(r.violations.filter(v => v.impact === "serious" || v.impact === "critical")
           .map(v => v.id + ": " + v.nodes.map(n => n.target.join(" ")).join(", "))),
  e => done(["axe failed: " + e]));
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data = tmp_path_factory.mktemp("web-accounts-browser") / "data"
    proc = RegistryProcess(data, "", "--auth", "required", "--signup", "open").start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh(browser: Any) -> Iterator[Any]:
    """The shared browser with no cookies before and after the test."""
    browser.delete_all_cookies()
    yield browser
    browser.delete_all_cookies()


def accessible(browser: Any, what: str) -> None:
    """axe-core on the page now shown: no serious or critical violation."""
    browser.set_script_timeout(30)
    browser.execute_script(AXE)
    problems = browser.execute_async_script(AXE_RUN)
    assert problems == [], f"{what}: {problems}"


def visit(browser: Any, site: RegistryProcess, path: str) -> None:
    browser.get(site.url + path)
    accessible(browser, path)


def shoot(browser: Any, name: str) -> None:
    target = screenshot_dir()
    if target is not None:
        browser.save_screenshot(str(target / f"{name}.png"))


def settled(browser: Any) -> None:
    """Wait until the page now shown has finished loading: an element found while a navigation is
    still under way can belong to a document that is about to be replaced ("Node with given id
    does not belong to the document"), which made these tests fail now and then on a busy machine."""
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.readyState") == "complete")


def fill(browser: Any, **fields: str) -> None:
    from selenium.webdriver.common.by import By

    settled(browser)
    for name, value in fields.items():
        box = browser.find_element(By.NAME, name)
        box.clear()
        box.send_keys(value)


def click(browser: Any, css: str) -> None:
    """Click what ``css`` finds and wait for the next page (a form's answer) to replace this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    settled(browser)
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, css).click()
    WebDriverWait(browser, 30).until(expected_conditions.staleness_of(page))
    settled(browser)


def submit(browser: Any, css: str = "main form.stack button[type=submit]") -> None:
    click(browser, css)


def sign_up(browser: Any, site: RegistryProcess, name: str) -> None:
    visit(browser, site, "/signup")
    shoot(browser, "signup")
    fill(browser, username=name, password=PASSWORD, password2=PASSWORD)
    submit(browser)
    assert browser.current_url == site.url + "/settings/keys"


def test_sign_up_paste_a_key_push_and_see_the_tag(fresh: Any, site: RegistryProcess, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = fresh
    name = unique("shari")
    sign_up(browser, site, name)
    accessible(browser, "/settings/keys (empty)")
    person = Person(site, tmp_path / "home", name)  # a key pair of their own, as ~/.ollama has
    browser.find_element(By.ID, "f-key").send_keys(person.identity.public_line)
    fill(browser, name="my laptop")
    submit(browser, "form[action='/settings/keys'] button[type=submit]")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-key]")
    assert [r.get_attribute("data-key") for r in rows] == [person.identity.fingerprint]
    assert "my laptop" in rows[0].text and "never" in rows[0].text
    accessible(browser, "/settings/keys")
    shoot(browser, "settings-keys")

    # Ollama's client pushes with that key (the §5 token dance) …
    manifest, blobs = model(200_000)
    OllamaWireClient(site.url, key=person.identity.private_key).push(f"{name}/shared", "latest", manifest, blobs)
    # … and so does `hangar push` (once the client knows it is signed in to this registry).
    person.signed_in(site.url)
    pushed = person.model(f"{name}/shared", "small")
    env = {**os.environ, "HANGAR_HOME": str(person.settings.home)}
    env.pop("HANGAR_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "push", str(pushed)], env=env, capture_output=True, text=True,
        cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    visit(browser, site, f"/{name}/shared")
    tags = {el.get_attribute("data-tag") for el in browser.find_elements(By.CSS_SELECTOR, "tr[data-tag]")}
    assert tags == {"latest", "small"}
    visit(browser, site, f"/settings/models/{name}/shared")  # the model's own settings
    assert {el.get_attribute("data-tag") for el in browser.find_elements(By.CSS_SELECTOR, "li[data-tag]")} == tags
    visit(browser, site, "/settings/keys")
    assert "never" not in browser.find_element(By.CSS_SELECTOR, "tr[data-key]").text  # its last use is shown
    assert audit_rows(site, actor=name, action="key.add")[0].detail["web"] is True


def test_the_connect_url_of_hangar_signin(fresh: Any, site: RegistryProcess, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = fresh
    name = unique("connie")
    sign_up(browser, site, name)
    env = {**os.environ, "HANGAR_HOME": str(tmp_path / "device")}
    env.pop("HANGAR_KEY", None)
    # A new device signs in to the existing account: it prints an approval code and the connect URL,
    # then waits for either.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "signin", site.host, "--username", name], env=env, cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "/connect?" in line:
                break
        url = re.search(r"(http://\S+/connect\?name=\S+&key=\S+)", "".join(seen))
        assert url, "".join(seen)
        assert "hangar keys approve" in "".join(seen)
        browser.get(url.group(1))
        accessible(browser, "/connect")
        fingerprint = browser.find_element(By.CSS_SELECTOR, "code[data-fingerprint]").text
        assert f"The device {socket.gethostname()} asks" in browser.find_element(By.TAG_NAME, "main").text
        shoot(browser, "connect")
        click(browser, "main form button[type=submit]")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Connected"
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0 and f"Signed in to {site.url} as '{name}'" in rest, rest
    user = accounts_of(site).get(name)
    assert user is not None
    assert [k.fingerprint for k in accounts_of(site).keys(user.id)] == [fingerprint]
    [row] = audit_rows(site, actor=name, action="key.add")
    assert row.detail["via"] == "connect" and row.detail["device"] == socket.gethostname()


def test_a_form_without_its_token_is_refused(fresh: Any, site: RegistryProcess, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = fresh
    name = unique("cora")
    sign_up(browser, site, name)
    person = Person(site, tmp_path / "home", name)
    browser.find_element(By.ID, "f-key").send_keys(person.identity.public_line)
    # As a forged form would: the same fields, without the page's token.
    browser.execute_script("document.querySelector(\"form[action='/settings/keys'] input[name=csrf]\").remove()")
    submit(browser, "form[action='/settings/keys'] button[type=submit]")
    assert browser.find_element(By.TAG_NAME, "h1").text == "403"
    user = accounts_of(site).get(name)
    assert user is not None and accounts_of(site).keys(user.id) == []


def test_sign_out_ends_the_session_on_the_server(fresh: Any, site: RegistryProcess) -> None:
    from selenium.webdriver.common.by import By

    browser = fresh
    name = unique("sid")
    sign_up(browser, site, name)
    cookie = browser.get_cookie("hangar_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert "hangar_session" not in browser.execute_script("return document.cookie")  # out of scripts' reach
    visit(browser, site, "/settings/profile")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr[data-session]")) == 1
    shoot(browser, "settings-profile")
    click(browser, "nav.account button[type=submit]")
    assert browser.current_url == site.url + "/"
    assert browser.find_elements(By.LINK_TEXT, "Sign in")
    user = accounts_of(site).get(name)
    assert user is not None and accounts_of(site).sessions(user.id) == []
    # The cookie's old value, replayed, is a stranger's.
    replay = httpx.get(site.url + "/settings/profile", cookies={"hangar_session": cookie["value"]})
    assert replay.status_code == 303 and replay.headers["location"].startswith("/signin")
    # And signing in again works from the page.
    visit(browser, site, "/signin")
    shoot(browser, "signin")
    fill(browser, username=name, password=PASSWORD)
    submit(browser)
    assert browser.find_element(By.CSS_SELECTOR, "nav.account a").text == name


def test_a_private_model_shows_to_a_signed_in_member_only(
    fresh: Any, site: RegistryProcess, tmp_path: Path, tiny_gguf: bytes
) -> None:
    from selenium.webdriver.common.by import By

    browser = fresh
    owner = Person(site, tmp_path / "owner", unique("owner")).signup()
    org = unique("lab")
    accounts_of(site).create_org(org, owner.name)
    publish(owner, f"{org}/hidden", tiny_gguf, readme="Hidden.")
    meta_of(site).set_repository_visibility(f"{org}/hidden", "private")
    visit(browser, site, f"/{org}/hidden")
    assert browser.find_element(By.TAG_NAME, "h1").text == "404"

    member = unique("mia")
    sign_up(browser, site, member)
    visit(browser, site, f"/{org}/hidden")
    assert browser.find_element(By.TAG_NAME, "h1").text == "404"  # not a member yet
    accounts_of(site).set_member(org, member, "reader")
    visit(browser, site, f"/{org}/hidden")
    assert "hidden" in browser.find_element(By.TAG_NAME, "h1").text


def test_every_account_page_passes_axe(fresh: Any, site: RegistryProcess) -> None:
    browser = fresh
    for path in ("/signin", "/signup"):
        visit(browser, site, path)
    name = unique("ada")
    sign_up(browser, site, name)
    org = unique("guild")
    accounts_of(site).create_org(org, name)
    for path in ("/settings/profile", "/settings/keys", "/settings/robots", f"/settings/orgs/{org}", "/signout"):
        visit(browser, site, path)
    # A robot's one-time token page too.
    browser.get(site.url + "/settings/robots")
    fill(browser, name="ci")
    submit(browser)
    accessible(browser, "/settings/robots (created)")
    assert browser.find_element("css selector", "input[data-token]").get_attribute("value").startswith("hgr_")
    shoot(browser, "settings-robots")
    # Dark theme: the same pages, the same rules (contrast included).
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    try:
        for path in ("/settings/keys", "/settings/profile"):
            visit(browser, site, path)
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
