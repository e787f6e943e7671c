"""Upload sessions: monolithic, chunked (both Content-Range forms), resume, mount, cancel."""

import httpx
import pytest

from tests.helpers import digest_of, error_codes, push_blob, random_bytes


def start(client: httpx.Client, repo: str) -> str:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    assert location.startswith("http://127.0.0.1:"), "Location must be absolute"
    assert r.headers["Docker-Upload-UUID"] in location
    assert r.headers["Range"] == "0-0" and r.headers["Upload-Offset"] == "0"
    return location


def test_monolithic_upload(client: httpx.Client, repo: str) -> None:
    data = random_bytes(100_000)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(data)}, content=data)
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest_of(data)
    assert r.headers["Location"].endswith(f"/v2/{repo}/blobs/{digest_of(data)}")
    assert client.get(f"/v2/{repo}/blobs/{digest_of(data)}").content == data


def test_monolithic_upload_with_wrong_digest_publishes_nothing(client: httpx.Client, repo: str) -> None:
    wrong = digest_of(b"something else")
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": wrong}, content=b"payload")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    assert client.head(f"/v2/{repo}/blobs/{wrong}").status_code == 404
    assert client.head(f"/v2/{repo}/blobs/{digest_of(b'payload')}").status_code == 404


def test_empty_blob(client: httpx.Client, repo: str) -> None:
    desc = push_blob(client, repo, b"")
    r = client.get(f"/v2/{repo}/blobs/{desc['digest']}")
    assert r.status_code == 200 and r.content == b"" and r.headers["Content-Length"] == "0"


@pytest.mark.parametrize("form", ["{a}-{b}", "bytes={a}-{b}", "bytes {a}-{b}/*"])
def test_chunked_upload(client: httpx.Client, repo: str, form: str) -> None:
    data = random_bytes(250_000)
    url = start(client, repo)
    for a in range(0, len(data), 100_000):
        chunk = data[a : a + 100_000]
        r = client.patch(
            url,
            content=chunk,
            headers={
                "Content-Range": form.format(a=a, b=a + len(chunk) - 1),
                "Content-Type": "application/octet-stream",
            },
        )
        assert r.status_code == 202, r.text
        assert r.headers["Range"] == f"0-{a + len(chunk) - 1}"
        assert r.headers["Location"].startswith("http://")
        url = r.headers["Location"]
    r = client.put(url, params={"digest": digest_of(data), "etag": "d41d8cd98f00b204e9800998ecf8427e-3"})
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/{repo}/blobs/{digest_of(data)}").content == data


def test_streamed_patch_without_range_and_final_chunk_in_put(client: httpx.Client, repo: str) -> None:
    data = random_bytes(70_000)
    url = start(client, repo)

    def body():  # type: ignore[no-untyped-def]  (chunked transfer encoding, no length)
        yield data[:30_000]
        yield data[30_000:50_000]

    r = client.patch(url, content=body())
    assert r.status_code == 202 and r.headers["Upload-Offset"] == "50000"
    r = client.put(r.headers["Location"], params={"digest": digest_of(data)}, content=data[50_000:])
    assert r.status_code == 201
    assert client.get(f"/v2/{repo}/blobs/{digest_of(data)}").content == data


def test_out_of_order_chunk_gets_416_with_current_range(client: httpx.Client, repo: str) -> None:
    url = start(client, repo)
    client.patch(url, content=b"0123456789", headers={"Content-Range": "0-9"})
    r = client.patch(url, content=b"abc", headers={"Content-Range": "20-22"})
    assert r.status_code == 416 and error_codes(r) == ["RANGE_INVALID"]
    assert r.headers["Range"] == "0-9" and r.headers["Upload-Offset"] == "10"
    r = client.patch(url, content=b"abc", headers={"Content-Range": "0-2"})
    assert r.status_code == 416


def test_content_range_must_match_length(client: httpx.Client, repo: str) -> None:
    url = start(client, repo)
    r = client.patch(url, content=b"abcd", headers={"Content-Range": "0-9"})
    assert r.status_code == 416
    for bad in ["x-y", "5-2", "bytes=a-"]:
        r = client.patch(url, content=b"ab", headers={"Content-Range": bad})
        assert r.status_code == 416, bad
    assert client.get(url).headers["Upload-Offset"] == "0"


def test_status_reports_progress(client: httpx.Client, repo: str) -> None:
    url = start(client, repo)
    client.patch(url, content=b"x" * 1234, headers={"Content-Range": "0-1233"})
    r = client.get(url)
    assert r.status_code == 204
    assert r.headers["Range"] == "0-1233" and r.headers["Upload-Offset"] == "1234"
    assert r.headers["Location"] == url


def test_finish_with_wrong_digest_discards_session(client: httpx.Client, repo: str) -> None:
    url = start(client, repo)
    client.patch(url, content=b"payload", headers={"Content-Range": "0-6"})
    r = client.put(url, params={"digest": digest_of(b"other")})
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    assert client.head(f"/v2/{repo}/blobs/{digest_of(b'other')}").status_code == 404
    assert client.head(f"/v2/{repo}/blobs/{digest_of(b'payload')}").status_code == 404
    assert error_codes(client.get(url)) == ["BLOB_UPLOAD_UNKNOWN"]


def test_finish_needs_a_valid_digest(client: httpx.Client, repo: str) -> None:
    url = start(client, repo)
    assert error_codes(client.put(url)) == ["DIGEST_INVALID"]
    assert error_codes(client.put(url, params={"digest": "sha256:nope"})) == ["DIGEST_INVALID"]
    assert client.get(url).status_code == 204  # the session survives a bad request


def test_cancel(client: httpx.Client, repo: str) -> None:
    url = start(client, repo)
    client.patch(url, content=b"abc")
    assert client.delete(url).status_code == 204
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        r = client.request(method, url, params={"digest": digest_of(b"abc")} if method == "PUT" else None)
        assert r.status_code == 404 and error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"], method


def test_sessions_belong_to_their_repository(client: httpx.Client, repo: str) -> None:
    url = start(client, repo)
    other = url.replace(f"/v2/{repo}/", "/v2/someone/else/")
    assert error_codes(client.patch(other, content=b"x")) == ["BLOB_UPLOAD_UNKNOWN"]
    assert error_codes(client.get(url.rsplit("/", 1)[0] + "/not-a-session")) == ["BLOB_UPLOAD_UNKNOWN"]


def test_cross_repository_mount(client: httpx.Client, repo: str) -> None:
    data = random_bytes(10_000)
    desc = push_blob(client, repo, data)
    target = repo.replace("/model", "/mounted")
    r = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": desc["digest"], "from": repo})
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == desc["digest"]
    assert client.get(f"/v2/{target}/blobs/{desc['digest']}").content == data


def test_mount_of_unknown_blob_starts_a_session(client: httpx.Client, repo: str) -> None:
    missing = digest_of(b"not anywhere")
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": missing, "from": "other/repo"})
    assert r.status_code == 202 and "Location" in r.headers
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": missing, "from": "not a repo"})
    assert r.status_code == 202
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": "sha256:bad", "from": "other/repo"})
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


def test_upload_without_trailing_slash(client: httpx.Client, repo: str) -> None:
    r = client.post(f"/v2/{repo}/blobs/uploads")
    assert r.status_code == 202


def test_body_longer_than_its_range_is_refused(client: httpx.Client, repo: str) -> None:
    url = start(client, repo)

    def body():  # type: ignore[no-untyped-def]  (chunked: the length is only known from Content-Range)
        yield b"0123456789"

    r = client.patch(url, content=body(), headers={"Content-Range": "0-2"})
    assert r.status_code == 400 and error_codes(r) == ["SIZE_INVALID"]
    assert client.get(url).headers["Upload-Offset"] == "0"
