"""The web site's listings and search at scale: summaries kept in the database at push time
(``model_summary``, migration 0006) and read by one SQL query per listing; search by words of
the description and by capability; private models for members, on ``/`` and in ``hangar
search``; pages of OCI names deeper than ``namespace/model``; and a README set with
``hangar readme``."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import html
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from alembic import command
from sqlalchemy import insert

from formats import mediatypes as mt
from formats.manifest import Descriptor, Manifest
from formats.names import ModelName
from registry import db
from registry.meta import Metadata
from registry.models import Manifest as ManifestTable
from registry.models import PullCount, Repository, Tag
from registry.storage import open_store
from registry.storage.filesystem import FilesystemStore
from registry.web.catalog import backfill
from tests.people import Person, accounts_of, meta_of, unique
from tests.servers import REPO_ROOT

TOOLS_TEMPLATE = "{{ if .Tools }}{{ .Tools }}{{ end }}{{ .System }} {{ .Prompt }}"


def get(person: Person, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(person.registry.url + path, headers=headers, timeout=30)


def publish(
    person: Person, repository: str, gguf: bytes, *, template: str, description: str, tag: str = "latest"
) -> None:
    """Push a model whose manifest carries ``description`` (the OCI annotation) and whose template
    is ``template`` (``.Tools`` in it: the ``tools`` capability)."""
    store = person.store
    name = ModelName.parse(f"{person.registry.host}/{repository}:{tag}")

    def blob(media_type: str, data: bytes) -> Descriptor:
        digest, size = store.add_blob_bytes(data)
        return Descriptor(media_type, digest, size)

    layers = [blob(mt.OLLAMA_MODEL, gguf), blob(mt.OLLAMA_TEMPLATE, template.encode())]
    config = blob(mt.DOCKER_CONFIG, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    doc = json.loads(Manifest.build(config, layers, mt.OCI_MANIFEST).raw)
    doc["annotations"] = {"org.opencontainers.image.description": description}
    store.put_manifest(name, json.dumps(doc).encode())
    person.push(name)


def names(found: httpx.Response) -> list[str]:
    assert found.status_code == 200, found.text
    return [m["name"] for m in found.json()["models"]]


def test_search_by_a_word_of_the_description_and_by_capability(people, tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    word = unique("lynx")
    publish(alice, f"{alice.name}/with-tools", tiny_gguf, template=TOOLS_TEMPLATE, description=f"Calls {word} tools.")
    publish(alice, f"{alice.name}/plain", tiny_gguf, template="{{ .Prompt }}", description=f"Just {word} text.")
    both = [f"{alice.name}/plain", f"{alice.name}/with-tools"]  # newest first

    assert names(get(alice, f"/api/search?q={word}")) == both
    assert names(get(alice, f"/api/search?q={word.upper()}")) == both  # any case
    assert names(get(alice, f"/api/search?q={word}+calls")) == [f"{alice.name}/with-tools"]  # every word
    assert names(get(alice, f"/api/search?q={word}&c=tools")) == [f"{alice.name}/with-tools"]
    assert names(get(alice, f"/api/search?q={word}&c=tools&c=vision")) == []
    assert names(get(alice, f"/api/search?q={word}&c=not-a-capability")) == both  # unknown ones are ignored
    assert names(get(alice, f"/api/search?q={word}%25")) == []  # a % is a character, not a wildcard
    assert names(get(alice, f"/api/search?q={word}_")) == []
    assert names(get(alice, "/api/search?q=plain+" + alice.name)) == [f"{alice.name}/plain"]  # the name too
    model = get(alice, f"/api/search?q={word}&c=tools").json()["models"][0]
    assert model["capabilities"] == ["tools"] and model["sizes"] and model["description"] == f"Calls {word} tools."
    page = get(alice, f"/search?q={word}&c=tools").text
    assert f'data-model="{alice.name}/with-tools"' in page and f'data-model="{alice.name}/plain"' not in page
    assert 'data-capability="tools"' in page


def test_the_summary_follows_pushes_and_deletes(people, tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    word = unique("gecko")
    repo = f"{alice.name}/changing"
    publish(alice, repo, tiny_gguf, template="{{ .Prompt }}", description=f"First {word}.", tag="v1")
    publish(alice, repo, tiny_gguf, template=TOOLS_TEMPLATE, description=f"Second {word}.", tag="v2")
    found = get(alice, f"/api/search?q={word}").json()["models"]
    # No "latest": the newest tag stands for the model.
    assert [(m["tags"], m["description"], m["capabilities"]) for m in found] == [(2, f"Second {word}.", ["tools"])]
    publish(alice, repo, tiny_gguf, template="{{ .Prompt }}", description=f"Latest {word}.", tag="latest")
    publish(alice, repo, tiny_gguf, template=TOOLS_TEMPLATE, description=f"Newer {word}.", tag="v3")
    found = get(alice, f"/api/search?q={word}").json()["models"]
    assert [(m["tags"], m["description"], m["capabilities"]) for m in found] == [(4, f"Latest {word}.", [])]

    token = alice.token(f"repository:{repo}:delete,pull")
    headers = {"Authorization": f"Bearer {token}"}
    r = httpx.delete(f"{alice.registry.url}/v2/{repo}/manifests/latest", headers=headers)
    assert r.status_code == 202
    found = get(alice, f"/api/search?q={word}").json()["models"]
    assert [(m["tags"], m["description"]) for m in found] == [(3, f"Newer {word}.")]
    for tag in ("v1", "v2", "v3"):
        digest = httpx.head(
            f"{alice.registry.url}/v2/{repo}/manifests/{tag}", headers={**headers, "Accept": mt.OCI_MANIFEST}
        ).headers["docker-content-digest"]
        assert httpx.delete(f"{alice.registry.url}/v2/{repo}/manifests/{digest}", headers=headers).status_code == 202
    assert names(get(alice, f"/api/search?q={word}")) == []
    assert get(alice, f"/{repo}").status_code == 404


def test_members_see_their_private_models_on_the_home_page_and_in_hangar_search(people, tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    owner, member, stranger = people("owner"), people("member"), people("stranger")
    org = f"org{owner.name[5:]}"
    accounts = accounts_of(owner.registry)
    accounts.create_org(org, owner.name)
    accounts.set_member(org, member.name, "reader")
    word = unique("mole")
    publish(owner, f"{org}/burrow", tiny_gguf, template="{{ .Prompt }}", description=f"A private {word}.")
    meta_of(owner.registry).set_repository_visibility(f"{org}/burrow", "private")

    assert f'data-model="{org}/burrow"' in get(owner, "/", member.token()).text
    assert f'data-model="{org}/burrow"' not in get(owner, "/", stranger.token()).text
    assert f'data-model="{org}/burrow"' not in get(owner, "/").text

    def hangar_search(person: Person) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HANGAR_HOME": str(person.settings.home)}
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "search", word, "-r", owner.registry.host],
            env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        )  # fmt: skip

    r = hangar_search(member)  # signed in to the registry with the key that signs its token requests
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()[1:]] == [f"{org}/burrow"]
    r = hangar_search(stranger)
    assert r.returncode == 0 and r.stdout == "" and "no models found" in r.stderr


def oci_push(person: Person, repository: str, tag: str, files: dict[str, bytes]) -> None:
    """Push as skopeo or oras would: plain OCI uploads and an OCI manifest, any repository depth."""
    token = person.token(f"repository:{repository}:push,pull")
    config = b"{}"
    with httpx.Client(base_url=person.registry.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        descriptors = []
        for media_type, data in [(mt.OCI_EMPTY, config), *((mt.OCTET_STREAM, d) for d in files.values())]:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            r = http.post(f"/v2/{repository}/blobs/uploads/")
            assert r.status_code == 202, r.text
            location = r.headers["location"]
            sep = "&" if "?" in location else "?"
            r = http.put(
                f"{location}{sep}digest={digest}", content=data, headers={"Content-Type": "application/octet-stream"}
            )
            assert r.status_code == 201, r.text
            descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
        layers = [
            {**d, "annotations": {"org.opencontainers.image.title": title}}
            for d, title in zip(descriptors[1:], files, strict=True)
        ]
        manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": descriptors[0], "layers": layers}
        r = http.put(f"/v2/{repository}/manifests/{tag}", content=json.dumps(manifest).encode(),
                     headers={"Content-Type": mt.OCI_MANIFEST})  # fmt: skip
        assert r.status_code == 201, r.text


def test_deeper_oci_names_have_pages(people) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    deep = f"{alice.name}/team/tools/artifact"
    oci_push(alice, deep, "v1", {"notes.txt": b"hello"})
    oci_push(alice, f"{alice.name}/team/tags", "latest", {"a.txt": b"a repository whose last part is 'tags'"})
    host = alice.registry.host

    page = get(alice, f"/{deep}")
    assert page.status_code == 200, page.text
    assert f"oras pull {host}/{deep}" in page.text and "ollama run" not in page.text
    assert 'data-tag="v1"' in page.text
    assert 'data-tag="v1"' in get(alice, f"/{deep}/tags").text
    tag = get(alice, f"/{deep}:v1")
    assert tag.status_code == 200 and f"FROM {host}/{deep}:v1" in html.unescape(tag.text)
    blob = "/".join(["", deep + ":v1", "blobs", hashlib.sha256(b"hello").hexdigest()[:12]])
    assert get(alice, blob).status_code == 200
    for missing in (
        f"/{deep}:v2",
        f"/{deep}x",
        f"/{alice.name}/team/tools",
        f"/{deep}/tags/more",
        f"/{deep}/Bad..Name",
    ):
        assert get(alice, missing).status_code == 404, missing
    # A whole path that names a repository is its model page, even when it ends in "tags".
    assert "notes.txt" not in get(alice, f"/{alice.name}/team/tags").text
    assert get(alice, f"/{alice.name}/team/tags").status_code == 200

    found = get(alice, f"/api/search?q={alice.name}+artifact").json()["models"]
    assert [(m["name"], m["namespace"], m["model"], m["url"]) for m in found] == [
        (deep, alice.name, "team/tools/artifact", f"{alice.registry.url}/{deep}")
    ]
    assert f'data-model="{deep}"' in get(alice, f"/{alice.name}").text


def test_a_readme_set_with_hangar_readme_is_rendered_inert(people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    word = unique("puffin")
    name = alice.model(f"{alice.name}/documented")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Documented\n\nA model about **{word}s**.\n\n<script>window.__pwned = 1</script>\n")
    env = {**os.environ, "HANGAR_HOME": str(alice.settings.home)}

    def hangar(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, cwd=REPO_ROOT,
            input=stdin, timeout=60,
        )  # fmt: skip

    r = hangar("readme", name.display())
    assert r.returncode == 1 and "has no README" in r.stderr
    r = hangar("readme", name.display(), str(readme))
    assert r.returncode == 0, r.stderr
    assert hangar("readme", name.display()).stdout == readme.read_text()
    layers = alice.store.get(name).manifest.layers
    assert [d.media_type for d in layers].count(mt.HANGAR_README) == 1 and layers[-1].media_type == mt.HANGAR_README
    alice.push(name)

    page = get(alice, f"/{alice.name}/documented")
    assert f"A model about <strong>{word}s</strong>." in page.text
    assert "<script>window" not in page.text and "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page.text
    assert names(get(alice, f"/api/search?q={word}")) == [f"{alice.name}/documented"]  # its first paragraph

    # Set again from standard input: one README layer, the old one's blob gone from the store.
    old = layers[-1].digest
    assert hangar("readme", name.display(), "-", stdin="Second version.\n").returncode == 0
    layers = alice.store.get(name).manifest.layers
    assert [d.media_type for d in layers].count(mt.HANGAR_README) == 1 and not alice.store.has_blob(old)
    r = hangar("readme", name.display(), "--remove")
    assert r.returncode == 0 and mt.HANGAR_README not in [d.media_type for d in alice.store.get(name).manifest.layers]
    alice.push(name)
    assert "No readme." in get(alice, f"/{alice.name}/documented").text

    (tmp_path / "big.md").write_text("x" * (256 * 1024 + 1))
    r = hangar("readme", name.display(), str(tmp_path / "big.md"))
    assert r.returncode == 1 and "at most 262144" in r.stderr
    r = hangar("readme", name.display(), str(tmp_path / "missing.md"))
    assert r.returncode == 1 and "cannot read" in r.stderr
    r = hangar("readme", f"{alice.registry.host}/{alice.name}/no-such-model", str(readme))
    assert r.returncode == 1 and "not found" in r.stderr


def test_migration_0006_summarises_older_repositories_and_the_backfill_reads_their_facts(
    tmp_path: Path, tiny_gguf: bytes
) -> None:
    """A registry upgraded from 0005: its repositories are listed at once (from the tables), and
    the facts only their blobs know arrive with the backfill each worker runs at start."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    command.upgrade(db.alembic_config(url), "0005")
    files = FilesystemStore(tmp_path / "blobs", uploads_dir=tmp_path / "uploads")

    def blob(media_type: str, data: bytes) -> Descriptor:
        d = Descriptor.parse({"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                              "size": len(data)}, "test")  # fmt: skip
        path = files.blob_path(d.digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return d

    layers = [blob(mt.OLLAMA_MODEL, tiny_gguf), blob(mt.OLLAMA_TEMPLATE, TOOLS_TEMPLATE.encode())]
    layers.append(blob(mt.HANGAR_README, b"An old model from before the summaries."))
    manifest = Manifest.build(blob(mt.DOCKER_CONFIG, b'{"model_format":"gguf"}'), layers)
    now = dt.datetime.now(dt.UTC)
    engine = db.make_engine(url, pooled=False)
    with engine.begin() as conn:
        conn.execute(insert(Repository.__table__).values(id=1, key="old/model", name="old/Model", visibility="public",
                                                         created_at=now))  # fmt: skip
        conn.execute(insert(ManifestTable.__table__).values(
            id=1, repository_id=1, digest=str(manifest.digest), media_type=manifest.media_type, size=len(manifest.raw),
            content=manifest.raw, created_at=now,
        ))  # fmt: skip
        for name, when in (("v1", now - dt.timedelta(days=1)), ("latest", now - dt.timedelta(days=2))):
            conn.execute(insert(Tag.__table__).values(repository_id=1, name=name, manifest_id=1, updated_at=when))
        conn.execute(insert(PullCount.__table__).values(repository_id=1, tag="v1", count=7, updated_at=now))
    command.upgrade(db.alembic_config(url), "head")

    meta = Metadata(engine)
    [row] = meta.models(set())
    assert (row.name, row.tag_count, row.head_tag, row.pulls, row.description) == ("old/Model", 2, "latest", 7, "")
    assert abs((row.updated_at - (now - dt.timedelta(days=1))).total_seconds()) < 1
    assert meta.models(set(), words=["old/model"]) == [row]

    assert asyncio.run(backfill(meta, open_store(tmp_path))) == 1
    [row] = meta.models(set())
    assert row.description == "An old model from before the summaries." and row.capabilities == ("tools",)
    assert row.parameters and row.sizes == (row.parameters,) and row.quantization == "F32"
    assert [t.facts is not None for t in meta.model_tags("old/model")] == [True, True]
    assert meta.models(set(), capabilities=["tools"], words=["before"]) == [row]
    assert asyncio.run(backfill(meta, open_store(tmp_path))) == 0  # nothing left to read


def test_search_pages_through_results_newest_first(people, tiny_gguf) -> None:  # type: ignore[no-untyped-def]
    import registry.web.pages as pages

    alice = people("alice")
    word = unique("wren")
    count = pages.PAGE_SIZE + 5
    first = f"{alice.name}/m00"
    publish(alice, first, tiny_gguf, template="{{ .Prompt }}", description=f"A {word}.")
    # The other models are copies of the first: its blobs mounted, its manifest put again.
    stored = meta_of(alice.registry).get_manifest(first, "latest")
    assert stored is not None
    repos = [f"{alice.name}/m{i:02d}" for i in range(1, count)]
    token = alice.token(*(f"repository:{r}:push,pull" for r in repos), f"repository:{first}:pull")
    headers = {"Authorization": f"Bearer {token}"}
    for repo in repos:
        for d in Manifest.parse(stored.content).blobs():
            r = httpx.post(
                f"{alice.registry.url}/v2/{repo}/blobs/uploads/?mount={d.digest}&from={first}", headers=headers
            )
            assert r.status_code == 201, r.text
        r = httpx.put(f"{alice.registry.url}/v2/{repo}/manifests/latest", content=stored.content,
                      headers={**headers, "Content-Type": stored.media_type})  # fmt: skip
        assert r.status_code == 201, r.text
    everything = [f"{alice.name}/m{i:02d}" for i in reversed(range(count))]
    first_page = get(alice, f"/api/search?q={word}").json()
    assert [m["name"] for m in first_page["models"]] == everything[: pages.PAGE_SIZE]
    assert first_page["next_page"] == 2
    second = get(alice, f"/api/search?q={word}&page=2").json()
    assert [m["name"] for m in second["models"]] == everything[pages.PAGE_SIZE :] and second["next_page"] is None
    assert 'rel="next"' in get(alice, f"/search?q={word}").text
    assert 'rel="prev"' in get(alice, f"/search?q={word}&page=2").text
