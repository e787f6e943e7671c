"""``/v2/``, the error envelope, name validation and unknown routes."""

import httpx
import pytest

from tests.helpers import error_codes


def test_api_version(client: httpx.Client) -> None:
    r = client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert r.json() == {}


@pytest.mark.parametrize(
    "path",
    [
        # Neither Ollama's namespace/model nor an OCI name (lower case, any depth, <= 255).
        "/v2/a/B/c/manifests/latest",
        "/v2/OnlyOne/manifests/latest",
        "/v2/Bad.ns/model/manifests/latest",
        "/v2/ns/-model/tags/list",
        "/v2/ns/mo%20del/blobs/sha256:" + "0" * 64,
        "/v2/" + "N" * 81 + "/m/tags/list",
        "/v2/" + "/".join(["n" * 63] * 3 + ["n" * 64]) + "/tags/list",  # 256 characters: 255 is the most
        "/v2/a/b/c..d/tags/list",
        "/v2/a/b/c_/manifests/latest",
        "/v2/a//b/manifests/latest",
        "/v2/a/B/c/blobs/uploads/",
    ],
)
def test_invalid_repository_names(client: httpx.Client, path: str) -> None:
    method = "POST" if path.endswith("uploads/") else "GET"
    r = client.request(method, path)
    assert r.status_code == 400
    assert error_codes(r) == ["NAME_INVALID"]
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_method_not_allowed_uses_the_envelope(client: httpx.Client, repo: str) -> None:
    r = client.post(f"/v2/{repo}/manifests/latest")
    assert r.status_code == 405
    assert error_codes(r) == ["UNSUPPORTED"]
    assert "PUT" in r.headers["Allow"]


def test_unknown_paths(client: httpx.Client) -> None:
    r = client.get("/v2/nothing-here")
    assert r.status_code == 404 and error_codes(r) == ["UNSUPPORTED"]
    r = client.get("/hangar/v1/nothing-here")
    assert r.status_code == 404 and error_codes(r) == ["UNSUPPORTED"]
    # Outside the API's roots, paths are the web site's (docs/web.md): a missing page is HTML.
    r = client.get("/elsewhere")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")


def test_unknown_repository(client: httpx.Client) -> None:
    for path in ["/v2/nobody/nothing/manifests/latest", "/v2/nobody/nothing/tags/list"]:
        r = client.get(path)
        assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]
    r = client.head("/v2/nobody/nothing/blobs/sha256:" + "0" * 64)
    assert r.status_code == 404 and r.content == b""


def test_invalid_digests_and_tags(client: httpx.Client, repo: str) -> None:
    for bad in ["sha256:xyz", "sha256:" + "A" * 64, "md5:abc", "sha512:" + "0" * 128]:
        r = client.get(f"/v2/{repo}/blobs/{bad}")
        assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"], bad
        r = client.get(f"/v2/{repo}/manifests/{bad}")
        assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"], bad
    r = client.get(f"/v2/{repo}/manifests/.hidden")
    assert r.status_code == 400 and error_codes(r) == ["TAG_INVALID"]
    r = client.get(f"/v2/{repo}/manifests/" + "t" * 129)
    assert r.status_code == 400 and error_codes(r) == ["TAG_INVALID"]
