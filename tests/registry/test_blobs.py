"""Blob HEAD, GET (Range, Location), DELETE."""

import time

import httpx
import pytest

from tests.helpers import digest_of, error_codes, push_blob, random_bytes


@pytest.fixture
def blob(client: httpx.Client, repo: str) -> tuple[str, bytes]:
    data = random_bytes(1_500_000)
    push_blob(client, repo, data)
    return digest_of(data), data


def test_head_gives_exact_length(client: httpx.Client, repo: str, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    r = client.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.content == b""


def test_get_streams_whole_blob_with_signed_location(
    client: httpx.Client, registry, repo: str, blob: tuple[str, bytes]
) -> None:  # type: ignore[no-untyped-def]
    digest, data = blob
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200 and r.content == data
    location = r.headers["Location"]
    assert location.startswith(registry.url + f"/v2/{repo}/blobs/{digest}?")
    assert "signature=" in location and "expires=" in location
    # The Location serves Range requests without any credentials (a fresh client, no headers).
    part = httpx.get(location, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-0", 0, 1), ("bytes=10-", 10, None), ("bytes=-5", -5, None), ("bytes=1000000-9999999", 1_000_000, None)],
)
def test_ranges(
    client: httpx.Client, repo: str, blob: tuple[str, bytes], header: str, start: int, end: int | None
) -> None:
    digest, data = blob
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert r.status_code == 206
    expected = data[start:end] if end is not None else data[start:]
    assert r.content == expected
    first = start if start >= 0 else len(data) + start
    assert r.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert int(r.headers["Content-Length"]) == len(expected)


@pytest.mark.parametrize("header", ["bytes=1500000-", "bytes=5-2", "bytes=-0", "bytes=abc", "items=0-1", "bytes=-"])
def test_unsatisfiable_ranges(client: httpx.Client, repo: str, blob: tuple[str, bytes], header: str) -> None:
    digest, data = blob
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"
    assert error_codes(r) == ["RANGE_INVALID"]


def test_bad_signatures_are_refused(client: httpx.Client, registry, repo: str, blob: tuple[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    digest, _ = blob
    location = client.get(f"/v2/{repo}/blobs/{digest}").headers["Location"]
    tampered = location.replace("signature=", "signature=x")
    r = httpx.get(tampered)
    assert r.status_code == 403 and error_codes(r) == ["DENIED"]
    expired = httpx.URL(location).copy_merge_params({"expires": str(int(time.time()) - 10)})
    assert httpx.get(expired).status_code == 403
    # A signature for one repository's path does not open another path.
    other = location.replace(f"/v2/{repo}/", "/v2/other/model/")
    assert httpx.get(other).status_code == 403


def test_unknown_blob(client: httpx.Client, repo: str, blob: tuple[str, bytes]) -> None:
    missing = digest_of(b"never uploaded")
    r = client.get(f"/v2/{repo}/blobs/{missing}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
    assert client.head(f"/v2/{repo}/blobs/{missing}").status_code == 404


def test_blobs_are_scoped_to_their_repository(client: httpx.Client, repo: str, blob: tuple[str, bytes]) -> None:
    digest, _ = blob
    other = repo.replace("/model", "/other")
    push_blob(client, other, b"something else")
    assert client.head(f"/v2/{other}/blobs/{digest}").status_code == 404


def test_delete_unlinks(client: httpx.Client, repo: str, blob: tuple[str, bytes]) -> None:
    digest, _ = blob
    r = client.delete(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 202
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    r = client.delete(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]


def _check_chunksums(text: str, data: bytes) -> None:
    import hashlib

    from registry.storage import CHUNK_SIZE

    expected_next = 0
    lines = text.splitlines()
    assert len(lines) == -(-len(data) // CHUNK_SIZE)
    for line in lines:
        digest, span = line.split(" ")
        first, last = map(int, span.split("-"))
        assert first == expected_next and last - first + 1 <= CHUNK_SIZE
        assert digest == "sha256:" + hashlib.sha256(data[first : last + 1]).hexdigest()
        expected_next = last + 1
    assert expected_next == len(data)


def test_chunksums(client: httpx.Client, registry, repo: str) -> None:  # type: ignore[no-untyped-def]
    data = random_bytes(40 * 1024 * 1024 + 123)
    url = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    for offset in range(0, len(data), 7_000_000):  # chunks that do not line up with chunk sums
        chunk = data[offset : offset + 7_000_000]
        assert (
            client.patch(
                url, content=chunk, headers={"Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
            ).status_code
            == 202
        )
    assert client.put(url, params={"digest": digest_of(data)}).status_code == 201

    r = client.get(f"/v2/{repo}/chunksums/{digest_of(data)}")
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest_of(data)
    _check_chunksums(r.text, data)
    # The Content-Location serves the chunks without credentials.
    part = httpx.get(r.headers["Content-Location"], headers={"Range": "bytes=16777216-16777315"})
    assert part.status_code == 206 and part.content == data[16777216:16777316]

    assert client.get(f"/v2/{repo}/chunksums/{digest_of(b'none')}").status_code == 404
    assert error_codes(client.get(f"/v2/{repo}/chunksums/sha256:bad")) == ["DIGEST_INVALID"]


def test_chunksums_are_computed_for_blobs_stored_without_them(client: httpx.Client, registry, repo: str) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from registry.db import make_engine

    data = random_bytes(20 * 1024 * 1024)
    push_blob(client, repo, data)
    url = registry.database_url or f"sqlite:///{registry.data_dir / 'registry.db'}"
    engine = make_engine(url, pooled=False)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE blob SET chunk_sums = NULL, chunk_size = NULL WHERE digest = :d"), {"d": digest_of(data)}
        )
    engine.dispose()
    r = client.get(f"/v2/{repo}/chunksums/{digest_of(data)}")
    assert r.status_code == 200
    _check_chunksums(r.text, data)
    assert client.get(f"/v2/{repo}/chunksums/{digest_of(data)}").text == r.text
