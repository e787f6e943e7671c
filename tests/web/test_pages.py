"""The web site over plain HTTP, on SQLite and PostgreSQL: pages, search, the JSON search, error
handling beside the API's, names that cannot collide, and visibility exactly as in the API."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys

import httpx
import pytest

from registry.accounts import RESERVED_NAMES, NameReserved, check_not_reserved
from registry.web.pages import TOP_LEVEL
from tests.people import accounts_of, meta_of, unique
from tests.servers import REPO_ROOT, wait_until
from tests.web.conftest import publish

README = """# Heading

A **tiny** llama that answers in {word}s.

<script>window.__pwned = 1</script>

[click](javascript:alert(1)) <img src=x onerror="window.__pwned = 2">
"""


def get(person, path: str, token: str | None = None) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(person.registry.url + path, headers=headers, timeout=30)


def test_the_sites_top_level_pages_are_reserved_account_names() -> None:
    for name in TOP_LEVEL:
        assert name in RESERVED_NAMES
        with pytest.raises(NameReserved):
            check_not_reserved(name)


def test_a_missing_page_is_html_and_a_missing_manifest_stays_the_oci_error(people) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    r = get(alice, "/nobody-here/nothing")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "<h1>404</h1>" in r.text
    r = get(alice, "/no_such_page_/x/y/z")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    r = get(alice, f"/v2/{alice.name}/nothing/manifests/latest", alice.token(f"repository:{alice.name}/nothing:pull"))
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    r = get(alice, "/hangar/v1/no-such-thing")
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "UNSUPPORTED"
    r = httpx.post(alice.registry.url + "/search")
    assert r.status_code == 405 and r.headers["content-type"].startswith("text/html")


def test_model_page_shows_what_the_gguf_and_layers_say(people, tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    word = unique("zebra")
    publish(alice, f"{alice.name}/tiny", tiny_gguf, readme=README.format(word=word))
    publish(alice, f"{alice.name}/tiny", tiny_gguf, tag="v1", readme=README.format(word=word))
    host = alice.registry.host

    page = get(alice, f"/{alice.name}/tiny")
    assert page.status_code == 200, page.text
    text = page.text
    assert f"ollama run {host}/{alice.name}/tiny" in text and f"hangar pull {host}/{alice.name}/tiny" in text
    assert f"A tiny llama that answers in {word}s." in text  # the description: the README's first paragraph
    row = re.search(r'<tr data-tag="v1">.*?</tr>', text, re.S)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(0), re.S)
    cells = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells]
    size, params, quant, context, arch, inputs = cells[:6]
    assert size.endswith(("kB", "MB")) and params and quant == "F32" and context == "512" and arch == "llama"
    assert inputs == "Text"
    # The README is rendered, and nothing of its author's HTML comes through.
    assert "<strong>tiny</strong>" in text
    assert "<script>window" not in text and "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in text
    assert "<img" not in text and 'href="javascript:' not in text
    assert "script-src 'self'" in page.headers["content-security-policy"]

    tag = get(alice, f"/{alice.name}/tiny:v1")
    assert tag.status_code == 200
    for kind in ("model", "template", "params", "license", "system", "readme"):
        assert f'data-layer="{kind}"' in tag.text
    assert f"FROM {host}/{alice.name}/tiny:v1" in tag.text
    modelfile = html.unescape(tag.text)
    assert "PARAMETER temperature 0.5\nPARAMETER stop </s>\n" in modelfile
    assert "SYSTEM You are a helpful assistant.\n" in modelfile
    assert "TEMPLATE {{ .System }} {{ .Prompt }}\n" in modelfile
    assert get(alice, f"/{alice.name}/tiny:nope").status_code == 404
    # Each layer links to its blob page; a text layer is shown in full there.
    template = re.search(rf'href="(/{alice.name}/tiny:v1/blobs/[0-9a-f]{{12}})">template<', tag.text)
    assert template is not None
    blob = get(alice, template.group(1))
    assert blob.status_code == 200 and "{{ .System }} {{ .Prompt }}" in html.unescape(blob.text)
    weights = re.search(rf'href="(/{alice.name}/tiny:v1/blobs/[0-9a-f]{{12}})">model<', tag.text)
    assert weights is not None and "Not a text layer" in get(alice, weights.group(1)).text
    for bad in ("/blobs/" + "0" * 12, "/blobs/abc", "/blobs/" + "z" * 12):
        assert get(alice, f"/{alice.name}/tiny:v1{bad}").status_code == 404
    assert get(alice, template.group(1).replace(":v1/", ":nope/")).status_code == 404

    tags = get(alice, f"/{alice.name}/tiny/tags")
    assert tags.status_code == 200 and 'data-tag="latest"' in tags.text and 'data-tag="v1"' in tags.text

    found = get(alice, f"/api/search?q={word}").json()
    assert [m["name"] for m in found["models"]] == [f"{alice.name}/tiny"]
    model = found["models"][0]
    assert model["tags"] == 2 and model["url"] == f"{alice.registry.url}/{alice.name}/tiny"
    assert model["description"] == f"A tiny llama that answers in {word}s."
    assert "tools" not in model["capabilities"] or isinstance(model["capabilities"], list)
    assert get(alice, f"/search?q={word}").text.count(f'data-model="{alice.name}/tiny"') == 1
    assert get(alice, f"/api/search?q={word}&c=vision").json()["models"] == []
    assert f'data-model="{alice.name}/tiny"' in get(alice, "/").text
    assert f'data-model="{alice.name}/tiny"' in get(alice, f"/{alice.name}").text


def test_private_models_are_absent_for_those_who_may_not_read_them(people, tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    owner, member, stranger = people("owner"), people("member"), people("stranger")
    org = f"org{owner.name[5:]}"
    accounts = accounts_of(owner.registry)
    accounts.create_org(org, owner.name)
    accounts.set_member(org, member.name, "reader")
    word = unique("secret")
    publish(owner, f"{org}/hidden", tiny_gguf, readme=f"Only for {word} eyes.")
    meta_of(owner.registry).set_repository_visibility(f"{org}/hidden", "private")
    accounts.set_default_visibility(org, "private")

    owners_view = get(owner, f"/{org}/hidden:latest", owner.token()).text
    readme_digest = re.search(r'/blobs/([0-9a-f]{12})">readme<', owners_view)
    assert readme_digest is not None
    paths = [f"/{org}/hidden", f"/{org}/hidden/tags", f"/{org}/hidden:latest", f"/{org}", f"/{org.upper()}/HIDDEN"]
    paths.append(f"/{org}/hidden:latest/blobs/{readme_digest.group(1)}")
    for who in (None, stranger.token()):
        for path in paths:
            r = get(owner, path, who)
            assert r.status_code == 404, path
            assert word not in r.text
        assert get(owner, f"/api/search?q={word}", who).json()["models"] == []
        assert f"{org}/hidden" not in get(owner, f"/search?q={word}", who).text
        assert f"{org}/hidden" not in get(owner, "/", who).text
    # The same page as a name that does not exist.
    assert get(owner, f"/{org}/hidden").text == get(owner, f"/{org}/no-such-model").text

    for reader in (member, owner):
        token = reader.token()
        assert get(owner, f"/{org}/hidden", token).status_code == 200
        assert get(owner, f"/{org}/hidden:latest", token).status_code == 200
        assert [m["name"] for m in get(owner, f"/api/search?q={word}", token).json()["models"]] == [f"{org}/hidden"]
        page = get(owner, f"/{org}", token)
        assert page.status_code == 200 and f'data-model="{org}/hidden"' in page.text and member.name in page.text
    # A bad token is refused, in HTML on a page.
    r = get(owner, "/", "not-a-token")
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")


def test_hangar_search_prints_the_registrys_search_as_a_table(people, tiny_gguf, tmp_path) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    word = unique("otter")
    publish(alice, f"{alice.name}/finder", tiny_gguf, readme=f"Finds {word} \x1b[31mred\x1b[0m things.")
    env = {**os.environ, "HANGAR_HOME": str(tmp_path / "home")}
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "search", word, "-r", alice.registry.host],
        env=env, capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split() == ["NAME", "DESCRIPTION", "CAPABILITIES", "SIZES", "TAGS", "UPDATED"]
    assert row.startswith(f"{alice.name}/finder ") and f"Finds {word}" in row and "\x1b" not in row
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "search", word, "-c", "vision", "-r", alice.registry.host],
        env=env, capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout == "" and "no models found" in r.stderr


def test_pulls_are_counted_in_batches_shown_and_sorted_by(people, tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    word = unique("heron")
    publish(alice, f"{alice.name}/pulled", tiny_gguf, readme=f"Pulled {word}.")
    publish(alice, f"{alice.name}/fresh", tiny_gguf, readme=f"Fresh {word}.")  # newer, never pulled
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    base = f"{alice.registry.url}/v2/{alice.name}/pulled/manifests"
    for _ in range(3):
        assert httpx.get(f"{base}/latest", headers=accept).status_code == 200
    digest = httpx.head(f"{base}/LATEST", headers=accept).headers["docker-content-digest"]  # a HEAD: not a pull
    assert httpx.get(f"{base}/{digest}", headers=accept).status_code == 200  # by digest: not counted

    def pulls() -> dict[str, int]:
        found = get(alice, f"/api/search?q={word}&o=popular").json()["models"]
        return {m["model"]: m["pulls"] for m in found}

    # A flush may fall between two of the pulls: wait for all three, then check nothing else counted.
    wait_until(lambda: pulls()["pulled"] >= 3, 30, "the pull counts to be written")
    assert pulls() == {"pulled": 3, "fresh": 0}
    order = [m["model"] for m in get(alice, f"/api/search?q={word}&o=popular").json()["models"]]
    assert order == ["pulled", "fresh"]
    order = [m["model"] for m in get(alice, f"/api/search?q={word}&o=newest").json()["models"]]
    assert order == ["fresh", "pulled"]
    page = get(alice, f"/{alice.name}/pulled").text
    assert '<span data-pulls="3">3 pulls</span>' in page
    assert f'data-model="{alice.name}/pulled"' in get(alice, "/").text.split('id="popular"')[1]
