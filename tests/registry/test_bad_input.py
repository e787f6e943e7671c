"""Bad input of every kind gets a 4xx in the error envelope: never a 500, never a traceback."""

import json

import httpx
import pytest

from tests.helpers import push_blob

D = "sha256:" + "0" * 64

NASTY = [
    ("GET", "/v2/ns/model/manifests/" + "a" * 5000, {}, b""),
    ("GET", "/v2/ns/model/blobs/sha256:" + "f" * 5000, {}, b""),
    ("GET", "/v2/ns/model/tags/list?n=99999999999999999999999", {}, b""),
    ("GET", "/v2/ns/model/tags/list?last=" + "z" * 5000, {}, b""),
    ("GET", "/v2/_catalog?n=abc", {}, b""),
    ("GET", "/v2/ns/model/referrers/" + D + "?artifactType=" + "x" * 3000, {}, b""),  # 200, empty
    ("GET", "/v2/ns/model/blobs/uploads/" + "u" * 3000, {}, b""),
    ("PATCH", "/v2/ns/model/blobs/uploads/../../etc/passwd", {}, b"x"),
    ("PUT", "/v2/ns/model/blobs/uploads/not-a-session?digest=" + D, {}, b""),
    ("POST", "/v2/ns/model/blobs/uploads/?digest=sha256:short", {}, b"x"),
    ("POST", "/v2/ns/model/blobs/uploads/?mount=" + D + "&from=" + "a/" * 100, {}, b""),
    ("PUT", "/v2/ns/model/manifests/latest", {"Content-Type": "application/json"}, b"null"),
    ("PUT", "/v2/ns/model/manifests/latest", {"Content-Type": "application/json"}, b'{"schemaVersion": 2}'),
    ("PUT", "/v2/ns/model/manifests/latest", {}, json.dumps({"schemaVersion": 2, "config": None}).encode()),
    ("PUT", "/v2/ns/model/manifests/latest", {}, json.dumps({"schemaVersion": 2, "config": [], "layers": 5}).encode()),
    ("PUT", "/v2/ns/model/manifests/latest", {}, json.dumps({"schemaVersion": 2, "manifests": {}}).encode()),
    ("PUT", "/v2/ns/model/manifests/latest", {}, b'{"schemaVersion": 2, "config": {"mediaType": "a/b", "digest": 7}}'),
    ("PUT", "/v2/ns/model/manifests/latest", {}, b'{"schemaVersion": 2, "subject": "x", "config": {}}'),
    ("PUT", "/v2/ns/model/manifests/" + D, {}, b"{}"),
    ("DELETE", "/v2/ns/model/manifests/-x", {}, b""),
    ("DELETE", "/v2/ns/model/blobs/" + D, {}, b""),
    ("GET", "/v2/ns/model/blobs/" + D, {"Range": "bytes=" + "9" * 400 + "-"}, b""),
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), NASTY)
def test_never_a_server_error(client: httpx.Client, method: str, path: str, headers: dict, body: bytes) -> None:
    r = client.request(method, path, headers=headers, content=body)
    assert r.status_code < 500, (r.status_code, r.text)
    assert "Traceback" not in r.text
    if r.status_code >= 400:
        assert r.json()["errors"][0]["code"]


def test_range_with_huge_numbers_on_a_real_blob(client: httpx.Client, repo: str) -> None:
    desc = push_blob(client, repo, b"small blob")
    r = client.get(f"/v2/{repo}/blobs/{desc['digest']}", headers={"Range": "bytes=0-" + "9" * 400})
    assert r.status_code == 206 and r.content == b"small blob"
    r = client.get(f"/v2/{repo}/blobs/{desc['digest']}", headers={"Range": "bytes=-" + "9" * 400})
    assert r.status_code == 206 and r.content == b"small blob"
