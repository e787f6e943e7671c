"""Tag lists and the catalog, with n/last pagination and Link headers."""

import uuid

import httpx

from formats import mediatypes as mt
from tests.helpers import error_codes, ollama_manifest, push_blob


def tag_all(client: httpx.Client, repo: str, tags: list[str]) -> None:
    config = push_blob(client, repo, b"{}")
    raw = ollama_manifest(config, [])
    for tag in tags:
        r = client.put(f"/v2/{repo}/manifests/{tag}", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
        assert r.status_code == 201


def test_tags_list_paginates(client: httpx.Client, repo: str) -> None:
    tag_all(client, repo, ["v3", "latest", "v1", "v2"])
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.json() == {"name": repo, "tags": ["latest", "v1", "v2", "v3"]}
    assert "Link" not in r.headers

    r = client.get(f"/v2/{repo}/tags/list", params={"n": 2})
    assert r.json()["tags"] == ["latest", "v1"]
    assert r.headers["Link"] == f'</v2/{repo}/tags/list?n=2&last=v1>; rel="next"'
    r = client.get(f"/v2/{repo}/tags/list", params={"n": 2, "last": "v1"})
    assert r.json()["tags"] == ["v2", "v3"] and "Link" not in r.headers
    assert client.get(f"/v2/{repo}/tags/list", params={"n": 0}).json()["tags"] == []


def test_tags_list_errors(client: httpx.Client, repo: str) -> None:
    assert error_codes(client.get("/v2/nobody/here/tags/list")) == ["NAME_UNKNOWN"]
    tag_all(client, repo, ["a"])
    for bad in ("-1", "x"):
        r = client.get(f"/v2/{repo}/tags/list", params={"n": bad})
        assert r.status_code == 400 and error_codes(r) == ["PAGINATION_NUMBER_INVALID"]


def test_catalog_paginates(client: httpx.Client) -> None:
    ns = f"cat{uuid.uuid4().hex[:8]}"
    names = [f"{ns}/m{i}" for i in range(3)]
    for name in names:
        tag_all(client, name, ["latest"])
    push_blob(client, f"{ns}/blobsonly", b"no manifest, so not listed")
    everything = client.get("/v2/_catalog").json()["repositories"]
    assert set(names) <= set(everything) and f"{ns}/blobsonly" not in everything
    assert everything == sorted(everything, key=lambda n: n.lower().encode())

    first = client.get("/v2/_catalog", params={"n": 1, "last": names[0]})
    assert first.json()["repositories"] == [names[1]]
    assert first.headers["Link"] == f'</v2/_catalog?n=1&last={ns}%2Fm1>; rel="next"'
