"""The web site in a real headless Chromium (Debian's, driven by Selenium): a pushed model on the
home page, found by search, its page and its tag page; a private model absent for a stranger; a
README's script inert; and a simple accessibility check of every page (labels, headings in
order, a language, alternative text). With ``HANGAR_WEB_SCREENSHOTS=docs/web`` the tests save
screenshots of the main pages there (light, dark and phone-sized)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.people import Person, accounts_of, meta_of, unique
from tests.servers import RegistryProcess
from tests.web.conftest import publish, screenshot_dir

pytestmark = pytest.mark.timeout(300)

README = """# Tiny llama

A tiny llama for {word} questions: small, quick and wrong.

## Use

```
ollama run {ref}
```

| Tag | Quantization |
|-----|--------------|
| latest | F32 |

<script>window.__pwned = 1; document.title = "pwned"</script>
<img src="x" onerror="window.__pwned = 2">
[a link](javascript:window.__pwned=3)
"""

# What every page must have for the accessibility check (a cheap stand-in for axe-core).
A11Y_SCRIPT = """
const problems = [];
if (!document.documentElement.lang) problems.push("no lang on <html>");
if (!document.title) problems.push("no <title>");
const h1 = document.querySelectorAll("h1");
if (h1.length !== 1) problems.push(h1.length + " h1 elements");
let last = 0;
for (const h of document.querySelectorAll("h1, h2, h3, h4, h5, h6")) {
  const level = Number(h.tagName[1]);
  if (last && level > last + 1) problems.push(h.tagName + " '" + h.textContent.trim() + "' after h" + last);
  last = level;
}
for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
  const labelled = (el.id && document.querySelector("label[for='" + el.id + "']")) || el.closest("label")
    || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby");
  if (!labelled) problems.push("unlabelled " + el.outerHTML.slice(0, 80));
}
for (const img of document.querySelectorAll("img")) if (!img.hasAttribute("alt")) problems.push("img without alt");
for (const b of document.querySelectorAll("button, a[href]")) {
  if (!b.textContent.trim() && !b.getAttribute("aria-label")) problems.push("nameless " + b.outerHTML.slice(0, 80));
}
return problems;
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    data = tmp_path_factory.mktemp("web") / "data"
    proc = RegistryProcess(data, "", "--auth", "required", "--signup", "open").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def published(site: RegistryProcess, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: bytes) -> dict[str, str]:
    """alice's public model (two tags, a README with a script in it), and an organisation's
    private one."""
    home = tmp_path_factory.mktemp("people")
    alice = Person(site, home / "alice", unique("alice")).signup()
    owner = Person(site, home / "owner", unique("owner")).signup()
    word = unique("walrus")
    ref = f"{site.host}/{alice.name}/tiny-llama"
    publish(alice, f"{alice.name}/tiny-llama", tiny_gguf, readme=README.format(word=word, ref=ref))
    publish(alice, f"{alice.name}/tiny-llama", tiny_gguf, tag="q4", readme=README.format(word=word, ref=ref))
    org = f"org{owner.name[5:]}"
    accounts = accounts_of(site)
    accounts.create_org(org, owner.name)
    publish(owner, f"{org}/secret-llama", tiny_gguf, readme=f"The {word} secret.")
    meta_of(site).set_repository_visibility(f"{org}/secret-llama", "private")
    return {"alice": alice.name, "org": org, "word": word, "model": f"{alice.name}/tiny-llama"}


def visit(browser: Any, site: RegistryProcess, path: str) -> None:
    browser.get(site.url + path)
    problems = browser.execute_script(A11Y_SCRIPT)
    assert problems == [], f"{path}: {problems}"
    assert browser.execute_script("return window.__pwned") is None


def shoot(browser: Any, name: str) -> None:
    target = screenshot_dir()
    if target is None:
        return
    browser.save_screenshot(str(target / f"{name}.png"))


def models_listed(browser: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [el.get_attribute("data-model") for el in browser.find_elements(By.CSS_SELECTOR, "li.model")]


def test_a_pushed_model_is_on_the_home_page_and_found_by_search(browser, site, published) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    visit(browser, site, "/")
    assert published["model"] in models_listed(browser)
    assert f"{published['org']}/secret-llama" not in models_listed(browser)
    shoot(browser, "home")

    # Search from the header's box, by a word that is only in the description.
    box = browser.find_element(By.ID, "site-q")
    box.send_keys(published["word"])
    box.submit()
    # The form's navigation runs after submit() returns: wait for it, or a busy machine finds the
    # old page here (and the next test finds the search page landing in place of its own).
    WebDriverWait(browser, 30).until(lambda b: "/search?q=" in b.current_url)
    visit(browser, site, browser.current_url.removeprefix(site.url))
    assert models_listed(browser) == [published["model"]]  # the private one has the word too
    card = browser.find_element(By.CSS_SELECTOR, "li.model")
    assert f"A tiny llama for {published['word']} questions" in card.text
    shoot(browser, "search")

    visit(browser, site, f"/{published['alice']}")
    assert models_listed(browser) == [published["model"]]
    shoot(browser, "namespace")


def test_the_model_page_shows_its_tags_and_an_inert_readme(browser, site, published) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    visit(browser, site, f"/{published['model']}")
    assert browser.title.startswith("tiny-llama")
    rows = {el.get_attribute("data-tag"): el.text for el in browser.find_elements(By.CSS_SELECTOR, "tr[data-tag]")}
    assert set(rows) == {"latest", "q4"}
    assert "llama" in rows["q4"] and "F32" in rows["q4"] and "512" in rows["q4"]
    command = browser.find_element(By.ID, "cmd-With-Ollama").get_attribute("value")
    assert command == f"ollama run {site.host}/{published['model']}"
    readme = browser.find_element(By.CSS_SELECTOR, ".readme")
    assert "<script>" in readme.text  # shown as text, never run
    assert readme.find_elements(By.TAG_NAME, "script") == [] and readme.find_elements(By.TAG_NAME, "img") == []
    assert readme.find_elements(By.TAG_NAME, "table") != []
    assert browser.title != "pwned"
    shoot(browser, "model")

    visit(browser, site, f"/{published['model']}:q4")
    kinds = [el.get_attribute("data-layer") for el in browser.find_elements(By.CSS_SELECTOR, "tr[data-layer]")]
    assert kinds == ["model", "template", "params", "license", "system", "readme"]
    modelfile = browser.find_element(By.CSS_SELECTOR, "pre.modelfile").text
    assert modelfile.startswith(f"FROM {site.host}/{published['model']}:q4\n")
    shoot(browser, "tag")

    visit(browser, site, f"/{published['model']}/tags")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr[data-tag]")) == 2


def test_a_private_model_is_absent_for_a_stranger(browser, site, published) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    for path in (f"/{published['org']}/secret-llama", f"/{published['org']}/secret-llama:latest"):
        visit(browser, site, path)
        assert browser.find_element(By.TAG_NAME, "h1").text == "404"
    visit(browser, site, f"/search?q={published['word']}")
    assert models_listed(browser) == [published["model"]]
    visit(browser, site, "/no-such-namespace")
    assert browser.find_element(By.TAG_NAME, "h1").text == "404"


def test_pages_read_on_a_phone_and_in_the_dark(browser, site, published) -> None:  # type: ignore[no-untyped-def]
    browser.set_window_size(390, 844)
    try:
        visit(browser, site, f"/{published['model']}")
        # Nothing wider than the screen but the tables' own scrolling boxes.
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390
        shoot(browser, "model-phone")
    finally:
        browser.set_window_size(1280, 900)
    dark = {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", dark)
    try:
        visit(browser, site, f"/{published['model']}")
        background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(18, 20, 23)"
        shoot(browser, "model-dark")
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def test_search_by_capability_and_a_private_model_for_a_member(browser, site, tmp_path, tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    """In the browser: the search page's capability boxes narrow the results; a private model
    is on the home page and in search for a member of its organisation (the browser sends the
    member's bearer token, as a signed-in session stands for one) and absent for a stranger."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    from tests.web.test_search import TOOLS_TEMPLATE
    from tests.web.test_search import publish as publish_described

    bob = Person(site, tmp_path / "bob", unique("bob")).signup()
    word = unique("ibis")
    publish_described(bob, f"{bob.name}/caller", tiny_gguf, template=TOOLS_TEMPLATE, description=f"Calls {word} tools.")
    publish_described(bob, f"{bob.name}/talker", tiny_gguf, template="{{ .Prompt }}", description=f"Talks {word} talk.")

    visit(browser, site, f"/search?q={word}")
    assert models_listed(browser) == [f"{bob.name}/talker", f"{bob.name}/caller"]
    browser.find_element(By.CSS_SELECTOR, "input[name=c][value=tools]").click()
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda b: "c=tools" in b.current_url)  # the form's navigation
    visit(browser, site, browser.current_url.removeprefix(site.url))
    assert models_listed(browser) == [f"{bob.name}/caller"]
    assert browser.find_element(By.CSS_SELECTOR, "input[name=c][value=tools]").is_selected()

    org = f"org{bob.name[3:]}"
    accounts_of(site).create_org(org, bob.name)
    publish_described(bob, f"{org}/hidden", tiny_gguf, template="{{ .Prompt }}", description=f"The {word} secret.")
    meta_of(site).set_repository_visibility(f"{org}/hidden", "private")
    stranger = Person(site, tmp_path / "stranger", unique("stranger")).signup()
    for who, sees in ((bob, True), (stranger, False), (None, False)):
        token = who.token() if who is not None else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
        try:
            visit(browser, site, "/")
            assert (f"{org}/hidden" in models_listed(browser)) is sees
            visit(browser, site, f"/search?q={word}")
            assert (f"{org}/hidden" in models_listed(browser)) is sees
            visit(browser, site, f"/{org}/hidden")
            assert (browser.find_element(By.TAG_NAME, "h1").text != "404") is sees
        finally:
            browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
