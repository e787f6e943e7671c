"""Property-based fuzzing of the registry's inputs (#16) with Hypothesis, against a real registry
process: names, tags, digests, ranges, Content-Range, upload ids and query parameters in URLs;
manifest bodies (deep nesting, huge arrays, wrong media types, duplicate keys, not JSON at all);
uploads driven with arbitrary headers; token requests of every shape. Every answer must be a
well-formed 2xx/3xx/4xx, never a 5xx, a hang or a crash; afterwards the registry still serves and
its log holds no unhandled error.

Examples per property: HANGAR_FUZZ_EXAMPLES (default 40, for CI); derandomized unless
HANGAR_FUZZ_SEED is set, so CI is repeatable and a person can search further."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.servers import RegistryProcess

EXAMPLES = int(os.environ.get("HANGAR_FUZZ_EXAMPLES", "40"))
SEED = os.environ.get("HANGAR_FUZZ_SEED")
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def fuzz(test):  # type: ignore[no-untyped-def]
    test = FUZZ(test)
    return seed(int(SEED))(test) if SEED is not None else test


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(tmp_path_factory.mktemp("fuzz") / "data", "", "--auth", "off").start()
    yield proc
    log = proc.log()
    proc.stop()
    assert "unhandled error" not in log and "Exception in ASGI application" not in log, log[-3000:]


@pytest.fixture(scope="module")
def auth_only_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(tmp_path_factory.mktemp("fuzz-auth") / "data", "", "--auth", "required").start()
    yield proc
    log = proc.log()
    proc.stop()
    assert "unhandled error" not in log and "Exception in ASGI application" not in log, log[-3000:]


@pytest.fixture(scope="module")
def http(open_registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=open_registry.url, timeout=30) as client:
        yield client


def no_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.method, str(response.request.url), response.text[:500])
    is_json = "application/json" in response.headers.get("content-type", "")
    if response.status_code >= 400 and response.request.method != "HEAD" and response.content and is_json:
        json.loads(response.content)  # an error envelope, not a half-written body


# Path segments: anything printable, the characters that matter to routers and parsers included.
segment = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=0, max_size=80
) | st.sampled_from(["..", ".", "a" * 300, "%2e%2e", "sha256:", "sha256:" + "0" * 64, "latest", "-", "_", "A"])
name_parts = st.lists(segment, min_size=1, max_size=5)
# Header values: what HTTP can carry at all (a client library refuses control characters itself).
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)


def path_of(parts: list[str]) -> str:
    return "/".join(quote(p, safe="") for p in parts)


@fuzz
@given(parts=name_parts, reference=segment, method=st.sampled_from(["GET", "HEAD", "DELETE", "PUT"]))
def test_manifest_urls(http: httpx.Client, parts: list[str], reference: str, method: str) -> None:
    body = b"{}" if method == "PUT" else None
    no_server_error(http.request(method, f"/v2/{path_of(parts)}/manifests/{quote(reference, safe='')}", content=body))


@fuzz
@given(parts=name_parts, digest=segment, method=st.sampled_from(["GET", "HEAD", "DELETE"]), rng=header_text)
def test_blob_urls_and_ranges(http: httpx.Client, parts: list[str], digest: str, method: str, rng: str) -> None:
    headers = {"Range": rng} if rng else {}
    no_server_error(http.request(method, f"/v2/{path_of(parts)}/blobs/{quote(digest, safe='')}", headers=headers))
    no_server_error(http.get(f"/v2/{path_of(parts)}/chunksums/{quote(digest, safe='')}"))


@fuzz
@given(
    parts=name_parts,
    n=st.one_of(st.none(), st.integers(-(2**70), 2**70).map(str), segment),
    last=st.one_of(st.none(), segment),
)
def test_listing_queries(http: httpx.Client, parts: list[str], n: str | None, last: str | None) -> None:
    params = {k: v for k, v in {"n": n, "last": last}.items() if v is not None}
    no_server_error(http.get(f"/v2/{path_of(parts)}/tags/list", params=params))
    no_server_error(http.get("/v2/_catalog", params=params))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=40,
)
MEDIA_TYPES = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/json",
    "text/plain",
    "",
]


def manifest_like(draw_value: object, media_type: str) -> dict[str, object]:
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": draw_value,
        "layers": [draw_value, {"mediaType": media_type, "digest": "sha256:" + "a" * 64, "size": -1}],
    }


@fuzz
@given(
    shape=st.sampled_from(["random", "manifest", "deep", "wide", "duplicate", "bytes"]),
    value=json_values,
    media_type=st.sampled_from(MEDIA_TYPES),
    raw=st.binary(max_size=300),
    depth=st.integers(1, 5000),
)
def test_manifest_bodies(
    http: httpx.Client, shape: str, value: object, media_type: str, raw: bytes, depth: int
) -> None:
    if shape == "random":
        body = json.dumps(value).encode()
    elif shape == "manifest":
        body = json.dumps(manifest_like(value, media_type)).encode()
    elif shape == "deep":
        body = b"[" * depth + b"]" * depth
    elif shape == "wide":
        body = json.dumps({"schemaVersion": 2, "layers": [{"size": 1}] * depth}).encode()
    elif shape == "duplicate":
        body = b'{"schemaVersion": 2, "schemaVersion": 1, "layers": [], "layers": {}}'
    else:
        body = raw
    headers = {"Content-Type": media_type} if media_type else {}
    no_server_error(http.put("/v2/fuzz/model/manifests/latest", content=body, headers=headers))
    no_server_error(http.put(f"/v2/fuzz/model/manifests/sha256:{'b' * 64}", content=body, headers=headers))


@fuzz
@given(
    content_range=st.one_of(
        st.none(),
        header_text,
        st.tuples(st.integers(-5, 2**64), st.integers(-5, 2**64)).map(lambda t: f"{t[0]}-{t[1]}"),
    ),
    body=st.binary(max_size=2048),
    digest=st.one_of(st.none(), segment),
    upload_id=st.one_of(st.none(), segment),
    finish=st.booleans(),
)
def test_upload_headers_and_ids(
    http: httpx.Client,
    content_range: str | None,
    body: bytes,
    digest: str | None,
    upload_id: str | None,
    finish: bool,
) -> None:
    started = http.post("/v2/fuzz/upload/blobs/uploads/")
    no_server_error(started)
    assert started.status_code == 202
    location = started.headers["location"]
    if upload_id is not None:
        location = f"/v2/fuzz/upload/blobs/uploads/{quote(upload_id, safe='')}"
    headers = {"Content-Type": "application/octet-stream"}
    if content_range is not None:
        headers["Content-Range"] = content_range
    answer = http.patch(location, content=body, headers=headers)
    no_server_error(answer)
    if finish:
        params = {"digest": digest} if digest is not None else {}
        target = answer.headers.get("location", location) if answer.status_code == 202 else location
        no_server_error(http.put(target, params=params))
    no_server_error(http.get(location))
    no_server_error(http.delete(location))


@fuzz
@given(
    authorization=st.one_of(
        st.none(),
        header_text,
        st.sampled_from(["Basic", "Basic !!!", "Basic " + "QQ==", "Bearer", "Bearer a.b.c", "Bearer " + "x" * 5000]),
    ),
    scopes=st.lists(segment, max_size=4),
    service=st.one_of(st.none(), segment),
    extra=st.dictionaries(st.sampled_from(["ts", "nonce", "offline_token", "client_id", "account"]), segment),
)
def test_token_requests(
    auth_only_registry: RegistryProcess,
    authorization: str | None,
    scopes: list[str],
    service: str | None,
    extra: dict[str, str],
) -> None:
    params: list[tuple[str, str]] = [("scope", s) for s in scopes]
    if service is not None:
        params.append(("service", service))
    params += list(extra.items())
    headers = {"Authorization": authorization} if authorization else {}
    with httpx.Client(base_url=auth_only_registry.url, timeout=30) as client:
        no_server_error(client.get("/token", params=params, headers=headers))
        no_server_error(client.get("/v2/fuzz/model/manifests/latest", headers=headers))


@fuzz
@given(declared=st.integers(0, 2**40), sent=st.binary(max_size=4096), header=st.sampled_from(["Content-Length", "X"]))
def test_a_lying_content_length(open_registry: RegistryProcess, declared: int, sent: bytes, header: str) -> None:
    """A PATCH whose body is shorter (or longer) than its Content-Length, then a hang-up: what
    h11 will not let an HTTP library send, sent on a raw socket."""
    with httpx.Client(base_url=open_registry.url, timeout=30) as client:
        location = client.post("/v2/fuzz/lying/blobs/uploads/").headers["location"]
        path = httpx.URL(open_registry.url).join(location).raw_path.decode()
    with socket.create_connection(("127.0.0.1", open_registry.port), timeout=10) as sock:
        request = f"PATCH {path} HTTP/1.1\r\nHost: {open_registry.host}\r\n{header}: {declared}\r\n"
        sock.sendall(request.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + sent)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := sock.recv(65536):
                answer += chunk
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert status < 500, answer[:500]
    with httpx.Client(base_url=open_registry.url, timeout=30) as client:
        progress = client.get(location)
        no_server_error(progress)
        if progress.status_code == 204:  # whatever was kept is a prefix of what was sent, never more
            kept = int(progress.headers.get("range", "0-0").split("-")[1]) + 1 if progress.headers.get("range") else 0
            assert kept <= max(1, len(sent))


def test_the_registry_still_serves_after_the_fuzzing(http: httpx.Client, tmp_path: Path) -> None:
    data = b"still here"
    started = http.post("/v2/fuzz/after/blobs/uploads/")
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    done = http.put(started.headers["location"], params={"digest": digest}, content=data)
    assert done.status_code == 201
    assert http.get(f"/v2/fuzz/after/blobs/{digest}").content == data
