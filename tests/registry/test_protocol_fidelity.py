"""What real clients do that the registry once got wrong (#18): pushes that outlive their token,
OCI names of any depth, Ollama's tensor-model push, tags in another case, the wording of a
refused push, and manifests a client's ``Accept`` does not take."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.push import PushOptions, push
from formats import mediatypes as mt
from tests.helpers import digest_of, error_codes, ollama_manifest, push_blob, push_model, random_bytes, write_oci_layout
from tests.ollama_wire import OllamaWireClient, WireError
from tests.people import Person, audit_rows, unique
from tests.registry.test_interop import skopeo
from tests.registry.test_ollama_wire import model
from tests.servers import REPO_ROOT, RegistryProcess

TTL = 3  # seconds a token lives on the registry below


@pytest.fixture(scope="module")
def short_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A registry whose tokens expire after TTL seconds (SQLite: expiry is not a matter of the
    metadata backend)."""
    data = tmp_path_factory.mktemp("short-tokens") / "data"
    proc = RegistryProcess(data, "", "--auth", "required", "--signup", "open", "--token-ttl", str(TTL))
    proc.start()
    yield proc
    proc.stop()


def challenge_scope(response: httpx.Response) -> str:
    header = response.headers["WWW-Authenticate"]
    return header.split('scope="')[1].split('"')[0] if 'scope="' in header else ""


# -- 1. a token that expires mid-push --------------------------------------------------------------


def test_an_expired_token_gets_a_challenge_that_names_the_scope(short_tokens, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = Person(short_tokens, tmp_path / "alice", unique("alice")).signup()
    repo = f"{alice.name}/model"
    with alice.http(f"repository:{repo}:pull,push,delete") as c:
        raw, blobs = push_model(c, repo)
        time.sleep(TTL + 1.5)
        digest = blobs[1]["digest"]
        cases = [
            ("HEAD", f"/v2/{repo}/blobs/{digest}", "pull"),  # of a public repository, too
            ("GET", f"/v2/{repo}/manifests/latest", "pull"),
            ("GET", f"/v2/{repo}/tags/list", "pull"),
            ("POST", f"/v2/{repo}/blobs/uploads/", "pull,push"),
            ("PUT", f"/v2/{repo}/manifests/latest", "pull,push"),
            ("DELETE", f"/v2/{repo}/manifests/latest", "pull,delete"),
        ]
        for method, path, actions in cases:
            r = c.request(method, path, content=raw if method == "PUT" else None)
            assert r.status_code == 401, (method, path, r.status_code)
            assert challenge_scope(r) == f"repository:{repo}:{actions}", (method, path, r.headers)


class SlowOllama(OllamaWireClient):
    """The Go client, pausing past the token's lifetime before each part but the first and before
    the manifest: one push spans several token lifetimes."""

    def _request(self, method: str, url: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        later_part = method == "PATCH" and not kwargs.get("headers", {}).get("Content-Range", "0-").startswith("0-")
        if later_part or (method == "PUT" and "/manifests/" in url):
            time.sleep(TTL + 0.5)
        return super()._request(method, url, **kwargs)


def test_an_ollama_push_longer_than_the_token_lifetime(short_tokens, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = Person(short_tokens, tmp_path / "alice", unique("alice")).signup()
    repo = f"{alice.name}/long"
    manifest, blobs = model(3_000_000)
    pusher = SlowOllama(short_tokens.url, min_part=1_000_000, key=alice.identity.private_key)
    started = time.monotonic()
    pusher.push(repo, "latest", manifest, blobs)
    assert time.monotonic() - started > 3 * TTL
    token_urls = [u for m, u, _ in pusher.requests if "/token?" in u]
    assert len(token_urls) >= 3  # renewed after each expiry…
    for url in token_urls:  # …each time for this repository, never for an empty scope
        scopes = httpx.URL(url).params.get_list("scope")
        assert scopes and all(s.startswith(f"repository:{repo}:") for s in scopes), url
    puller = OllamaWireClient(short_tokens.url, min_part=1_000_000, key=alice.identity.private_key)
    got, files = puller.pull(repo, "latest", tmp_path)
    assert got == manifest and {d: p.read_bytes() for d, p in files.items()} == blobs


@pytest.mark.parametrize("renew_ahead", [True, False], ids=["renewed-ahead", "expired-midway"])
def test_a_hangar_push_longer_than_the_token_lifetime(
    short_tokens, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renew_ahead: bool
) -> None:  # type: ignore[no-untyped-def]
    """hangar renews a token before it expires; where it did not (a clock jump, a slow request),
    the token expires under a part, the registry's challenge names the scope, and the part goes
    again with a new token."""
    import client.auth

    if not renew_ahead:
        monkeypatch.setattr(client.auth, "RENEW_BEFORE", -3600.0)
    alice = Person(short_tokens, tmp_path / "alice", unique("alice")).signup()
    name = alice.model(f"{alice.name}/slow", size=7_000_000)
    started = time.monotonic()
    # 1 MB/s in 1 MB parts: about six seconds of PATCHes, two token lifetimes.
    result = asyncio.run(push(name, alice.store, alice.settings, PushOptions(part_size=1_000_000, max_rate=1_000_000)))
    assert time.monotonic() - started > 2 * TTL and result.bytes_sent >= 7_000_000
    with alice.http(f"repository:{alice.name}/slow:pull") as c:
        r = c.get(f"/v2/{alice.name}/slow/manifests/latest")
        assert r.status_code == 200 and r.content == alice.store.get(name).manifest.raw
    expired = [
        r
        for r in audit_rows(short_tokens, action="auth", outcome="denied")
        if f"/{alice.name}/slow/" in r.target and "expired" in r.detail.get("reason", "")
    ]
    assert bool(expired) != renew_ahead  # the tokens did expire under the push, or never did


# -- 2. OCI names of any depth ----------------------------------------------------------------


def test_oci_names_of_one_three_parts_and_dots(client: httpx.Client, tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    """skopeo to names Ollama's grammar does not have (authentication off: a dotted first
    component names no account); catalog and tag listings name them."""
    suffix = unique("n")
    names = [f"{suffix}", f"{suffix}/team/app", f"my.org{suffix}/app", f"{suffix}/a.b/c_d/e--f/g__h"]
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, "v1", b"{}", [(mt.OLLAMA_MODEL, random_bytes(100_000))])
    for name in names:
        target = f"docker://{registry.host}/{name}:v1"
        skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{layout}:v1", target)
        assert digest_of(skopeo("inspect", "--raw", "--tls-verify=false", target).stdout.encode()) == digest
        tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{registry.host}/{name}").stdout)
        assert tags["Tags"] == ["v1"]
        r = client.get(f"/v2/{name}/tags/list")
        assert r.json() == {"name": name, "tags": ["v1"]}
        out = tmp_path / name.replace("/", "_")
        skopeo("copy", "--src-tls-verify=false", "--preserve-digests", target, f"oci:{out}:v1")
        assert json.loads((out / "index.json").read_text())["manifests"][0]["digest"] == digest
        r = client.get(f"/v2/{name}/referrers/{digest}")
        assert r.status_code == 200 and r.json()["manifests"] == []
    catalog = client.get("/v2/_catalog").json()["repositories"]
    assert set(names) <= set(catalog)
    # Routes whose suffix looks like a name's part still split where the route says.
    blob = push_blob(client, f"{suffix}/blobs/manifests", b"odd")
    assert client.head(f"/v2/{suffix}/blobs/manifests/blobs/{blob['digest']}").status_code == 200


def _admin(registry: RegistryProcess, *args: str) -> None:
    cmd = [sys.executable, "-m", "cli", "registry", "admin", *args, "--data-dir", str(registry.data_dir)]
    if registry.database_url:
        cmd += ["--database-url", registry.database_url]
    subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=True)


def test_oci_names_with_robots_and_permissions(people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The first component is the namespace; a one-part name is library's. skopeo with robot
    tokens, authentication on."""
    alice, bob = people("alice"), people("bob")
    registry = alice.registry
    host = registry.host
    _admin(registry, "org", "create", "library", "--allow-library", "--owner", alice.name)
    alice.account.set_default_visibility("library", "private")
    library = alice.account.create_robot("library", unique("ci"), "push", 3600)
    mine = alice.account.create_robot(alice.name, "ci", "push", 3600)
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, "v1", b"{}", [(mt.OLLAMA_MODEL, random_bytes(50_000))])
    short = unique("alpine")
    pushes = [(library, short), (mine, f"{alice.name}/team/app"), (mine, f"{alice.name}/my.org/app.v2")]
    for robot, name in pushes:
        creds = f"{robot['username']}:{robot['token']}"
        target = f"docker://{host}/{name}:v1"
        skopeo(
            "copy", "--dest-tls-verify=false", "--dest-creds", creds, "--preserve-digests", f"oci:{layout}:v1", target
        )
        raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds, target).stdout.encode()
        assert digest_of(raw) == digest
        tags = json.loads(skopeo("list-tags", "--tls-verify=false", "--creds", creds, f"docker://{host}/{name}").stdout)
        assert tags["Tags"] == ["v1"]

    # alice's robot may not push a one-part name (library's), nor into bob's namespace.
    creds = f"{mine['username']}:{mine['token']}"
    for name in (unique("busybox"), f"{bob.name}/team/app"):
        refused = subprocess.run(
            ["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:v1", f"docker://{host}/{name}:v1"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert refused.returncode != 0, refused.stderr
        assert f"denied: access denied: robot:{mine['username']} may not push {name}" in refused.stderr

    # library's repository is private: library's members list it, others do not see it.
    with httpx.Client(base_url=registry.url, headers={"Authorization": f"Bearer {alice.token()}"}) as c:
        listed = c.get("/v2/_catalog").json()["repositories"]
        assert {short, f"{alice.name}/team/app", f"{alice.name}/my.org/app.v2"} <= set(listed)
    with httpx.Client(base_url=registry.url, headers={"Authorization": f"Bearer {bob.token()}"}) as c:
        assert short not in c.get("/v2/_catalog").json()["repositories"]
        r = c.get(f"/v2/{short}/tags/list")
        assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]
    r = httpx.get(f"{registry.url}/v2/{short}/manifests/v1")
    assert r.status_code == 401 and challenge_scope(r) == f"repository:{short}:pull"


# -- 3. Ollama's tensor-model push (§7.5) ----------------------------------------------------------


def test_ollama_tensor_model_push_path(client: httpx.Client, repo: str) -> None:
    """The exact requests of §7.5 without a direct upload URL: init ``POST ?digest=`` with no
    body, the chunked fallback (relative Locations resolved), the commit; 201 on a second init."""
    weights = random_bytes(2_500_000)
    config = b'{"model_format":"safetensors"}'
    ua = {"User-Agent": "ollama-transfer/1.0"}
    for data in (weights, config):
        digest = digest_of(data)
        assert client.head(f"/v2/{repo}/blobs/{digest}", headers=ua).status_code == 404
        init = {**ua, "X-Redirect-Uploads": "2", "X-Content-Length": str(len(data))}
        r = client.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", headers=init)
        assert r.status_code == 202, r.text
        assert "X-Direct-Upload-URL" not in r.headers
        location = str(r.url.join(r.headers.get("Docker-Upload-Location") or r.headers["Location"]))
        md5s, parts = b"", [(o, data[o : o + 1_000_000]) for o in range(0, len(data), 1_000_000)]
        for offset, chunk in parts:
            r = client.patch(
                location,
                content=chunk,
                headers={
                    **ua,
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    "X-Redirect-Uploads": "1",
                },
            )
            assert r.status_code == 202, r.text
            location = str(r.url.join(r.headers.get("Docker-Upload-Location") or r.headers["Location"]))
            md5s += hashlib.md5(chunk).digest()
        etag = f"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"
        r = client.put(
            location + ("&" if "?" in location else "?") + f"digest={digest.replace(':', '%3A')}&etag={etag}",
            headers={**ua, "Content-Type": "application/octet-stream", "Content-Length": "0"},
        )
        assert r.status_code == 201, r.text
        # Pushed again: "already present", no session.
        r = client.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", headers=init)
        assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == digest
        assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200
    raw = ollama_manifest(
        {"digest": digest_of(config), "size": len(config)},
        [{"mediaType": mt.OLLAMA_TENSOR, "digest": digest_of(weights), "size": len(weights)}],
    )
    assert (
        client.put(
            f"/v2/{repo}/manifests/latest", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST}
        ).status_code
        == 201
    )
    assert client.get(f"/v2/{repo}/blobs/{digest_of(weights)}").content == weights

    # A blob another repository has is not "present" here (no proof the client holds it).
    other = repo.replace("/model", "/other")
    r = client.post(f"/v2/{other}/blobs/uploads/?digest={digest_of(weights)}", headers={"X-Redirect-Uploads": "2"})
    assert r.status_code == 202
    assert client.head(f"/v2/{other}/blobs/{digest_of(weights)}").status_code == 404
    # An empty monolithic upload is still one (the empty blob's digest).
    empty = digest_of(b"")
    assert client.post(f"/v2/{repo}/blobs/uploads/?digest={empty}", content=b"").status_code == 201
    # And a commit of a session without the bytes fails the digest, as before.
    session = client.post(f"/v2/{repo}/blobs/uploads/?digest={digest_of(b'x' * 10)}").headers["Location"]
    r = client.put(session + "?digest=" + digest_of(b"x" * 10))
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


# -- 4. tags compare case-insensitively --------------------------------------------------------


def test_tags_are_found_in_any_case(client: httpx.Client, repo: str) -> None:
    raw, _ = push_model(client, repo, "latest")
    for spelling in ("LATEST", "Latest", "latest"):
        r = client.get(f"/v2/{repo}/manifests/{spelling}")
        assert r.status_code == 200 and r.content == raw, spelling
        assert client.head(f"/v2/{repo.upper()}/manifests/{spelling}").status_code == 200
    # A push under another spelling moves the tag it names, whose spelling stays.
    raw2, _ = push_model(client, repo, "LATEST")
    assert client.get(f"/v2/{repo}/manifests/latest").content == raw2
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["latest"]
    # The Ollama client finds it however the name is written.
    assert (
        OllamaWireClient(str(client.base_url))._send("GET", f"{client.base_url}/v2/{repo}/manifests/Latest").content
        == raw2
    )
    assert client.delete(f"/v2/{repo}/manifests/LaTeSt").status_code == 202
    r = client.get(f"/v2/{repo}/manifests/latest")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]


# -- 5. a refused push says "access denied" ------------------------------------------------------


def test_a_push_into_another_namespace_says_access_denied(people) -> None:  # type: ignore[no-untyped-def]
    """Ollama's CLI explains a refused push only when the message contains "unauthorized" or
    "access denied" (§4.1); it shows the body verbatim."""
    alice, bob = people("alice"), people("bob")
    manifest, blobs = model(10_000)
    pusher = OllamaWireClient(bob.registry.url, key=bob.identity.private_key)
    with pytest.raises(WireError) as refused:
        pusher.push(f"{alice.name}/x", "latest", manifest, blobs)
    assert str(refused.value).startswith("403: ") and "access denied" in str(refused.value)
    assert f"{bob.name} may not push {alice.name}/x" in str(refused.value)


# -- 6. Accept on manifest GET and HEAD -------------------------------------------------------------


def test_a_manifest_the_accept_header_does_not_take_is_unknown(
    client: httpx.Client, repo: str, reference_registry
) -> None:  # type: ignore[no-untyped-def]
    config = push_blob(client, repo, b"{}")
    layer = push_blob(client, repo, b"weights")
    stored = {}
    for tag, media_type, config_type in (
        ("oci", mt.OCI_MANIFEST, mt.OCI_CONFIG),
        ("docker", mt.DOCKER_MANIFEST, mt.DOCKER_CONFIG),
    ):
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, **config},
            "layers": [{"mediaType": mt.OLLAMA_MODEL, **layer}],
        }
        stored[tag] = json.dumps(doc).encode()
        assert (
            client.put(
                f"/v2/{repo}/manifests/{tag}", content=stored[tag], headers={"Content-Type": media_type}
            ).status_code
            == 201
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}).encode()
    assert (
        client.put(f"/v2/{repo}/manifests/index", content=index, headers={"Content-Type": mt.OCI_INDEX}).status_code
        == 201
    )
    both = f"{mt.DOCKER_MANIFEST}, {mt.OCI_MANIFEST};q=0.9"  # what hangar sends
    cases = {
        "oci": {None: 200, "*/*": 200, mt.OCI_MANIFEST: 200, both: 200, mt.DOCKER_MANIFEST: 404, mt.OCI_INDEX: 404},
        "docker": {
            None: 200,
            "*/*": 200,
            mt.DOCKER_MANIFEST: 200,
            both: 200,
            mt.OCI_MANIFEST: 404,
            "application/json": 404,
        },
        "index": {None: 200, "application/*": 200, mt.OCI_INDEX: 200, both: 404},
    }
    for tag, answers in cases.items():
        for accept, status in answers.items():
            headers = {"Accept": accept} if accept else {}
            for method in ("GET", "HEAD"):
                r = client.request(method, f"/v2/{repo}/manifests/{tag}", headers=headers)
                assert r.status_code == status, (tag, accept, method, r.status_code)
                if status == 404 and method == "GET":
                    assert error_codes(r) == ["MANIFEST_UNKNOWN"]
    digest = digest_of(stored["oci"])  # by digest too
    assert client.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": mt.DOCKER_MANIFEST}).status_code == 404
    # As the reference registry answers a docker-v2-only client asking for an OCI manifest.
    ref = httpx.Client(base_url=reference_registry.url)
    for data in (b"{}", b"weights"):
        session = ref.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        assert ref.put(f"{session}&digest={digest_of(data)}", content=data).status_code == 201
    assert (
        ref.put(
            f"/v2/{repo}/manifests/oci", content=stored["oci"], headers={"Content-Type": mt.OCI_MANIFEST}
        ).status_code
        == 201
    )
    r = ref.get(f"/v2/{repo}/manifests/oci", headers={"Accept": mt.DOCKER_MANIFEST})
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
