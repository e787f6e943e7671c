"""What an administrator does with cached models (``hangar registry cache copy`` and ``make-local``),
and the single flight across worker processes: a real upstream (the reference ``docker-registry``)
behind the counting proxy, the mirror as ``hangar registry serve`` and the real CLI."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.mirror.conftest import blob_path, push_plain_model
from tests.mirror.test_mirror import Mirror, Proxy, cache_cli, pull_into, wait_cached
from tests.people import Person, accounts_of, unique
from tests.servers import ReferenceRegistry, RegistryProcess, wait_until


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[ReferenceRegistry]:
    proc = ReferenceRegistry(tmp_path / "reference").start()
    yield proc
    proc.stop()


def stored_blobs(registry: RegistryProcess) -> dict[str, tuple[int, int]]:
    """Every file of the blob store: path -> (inode, size)."""
    root = registry.data_dir / "blobs"
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def test_a_cached_model_copied_into_a_local_repository_shares_its_blobs_and_outlives_upstream_and_eviction(
    reference: ReferenceRegistry, counting_proxy: Proxy, make_mirror: Mirror, tmp_path: Path
) -> None:
    raw, _ = push_plain_model(reference.url, "library/tiny", "latest", os.urandom(1_000_000))
    raw_small, _ = push_plain_model(reference.url, "library/tiny", "small", os.urandom(200_000))
    upstream, traffic = counting_proxy(reference.url)
    mirror = make_mirror("--upstream", f"library={upstream}")
    for tag, expected in (("latest", raw), ("small", raw_small)):
        assert pull_into(tmp_path / f"pull-{tag}", f"{mirror.host}/library/tiny:{tag}")[0] == expected
        wait_cached(mirror, "library/tiny", tag)
    fetched, before = traffic.blob_bytes, stored_blobs(mirror)

    # With accounts on (the default), a copy goes only where a push could: a user's or an organisation's namespace.
    refused = cache_cli(mirror, "copy", "library/tiny", "acme/tiny")
    assert refused.returncode == 1 and "no user or organisation named 'acme'" in refused.stderr, refused.stderr
    missing = cache_cli(mirror, "copy", "library/nothing", "acme/tiny", "--auth", "off")
    assert missing.returncode == 1 and "library/nothing is not a cached model" in missing.stderr
    assert httpx.get(f"{mirror.url}/v2/acme/tiny/tags/list").status_code == 404  # nothing made by a refusal

    copied = cache_cli(mirror, "copy", "library/tiny", "acme/tiny", "--auth", "off")
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.split("\n")[:2] == [
        "copied library/tiny:latest to acme/tiny:latest",
        "copied library/tiny:small to acme/tiny:small",
    ]
    one = cache_cli(mirror, "copy", "library/tiny:small", "acme/tiny-small:v1", "--auth", "off")
    assert one.returncode == 0 and "copied library/tiny:small to acme/tiny-small:v1" in one.stdout, one.stderr
    assert traffic.blob_bytes == fetched  # nothing downloaded again
    assert stored_blobs(mirror) == before  # the same files, no second copy of any byte

    # The copies are local: not in the cache's list, left alone by eviction, which drops the original
    # (the copy pinned it only while it ran).
    assert "acme/" not in cache_cli(mirror, "list").stdout
    evicted = cache_cli(mirror, "evict", "--max-size", "1KB")
    assert evicted.returncode == 0 and "evicted library/tiny" in evicted.stdout, evicted.stderr
    assert "library/tiny" not in cache_cli(mirror, "list").stdout
    assert stored_blobs(mirror) == before  # the copies still use every blob
    r = httpx.get(f"{mirror.url}/v2/acme/tiny/manifests/latest")
    assert r.status_code == 200 and r.content == raw and "x-hangar-mirror" not in r.headers

    # The upstream stops: the copies still pull; the evicted original no longer can.
    reference.stop()
    assert pull_into(tmp_path / "after", f"{mirror.host}/acme/tiny:latest")[0] == raw
    assert pull_into(tmp_path / "after-small", f"{mirror.host}/acme/tiny-small:v1")[0] == raw_small
    assert httpx.get(f"{mirror.url}/v2/library/tiny/manifests/latest").status_code == 503
    assert traffic.blob_bytes == fetched


def test_a_cached_model_made_local_takes_pushes_from_its_namespace_and_refuses_strangers(
    reference: ReferenceRegistry, counting_proxy: Proxy, make_mirror: Mirror, tmp_path: Path
) -> None:
    team = unique("acme")  # an organisation on the mirror, its namespace routed to the upstream
    raw, _ = push_plain_model(reference.url, f"{team}/model", "latest", os.urandom(300_000))
    upstream, traffic = counting_proxy(reference.url)
    mirror = make_mirror("--auth", "required", "--signup", "open", "--upstream", f"{team}={upstream}")
    bob = Person(mirror, tmp_path / "bob", unique("bob")).signup()
    carol = Person(mirror, tmp_path / "carol", unique("carol")).signup()
    accounts_of(mirror).create_org(team, bob.name)
    assert pull_into(tmp_path / "anonymous", f"{mirror.host}/{team}/model:latest")[0] == raw
    wait_cached(mirror, f"{team}/model", "latest")

    # Cached, it refuses even its namespace's owner, naming the command that changes that.
    with bob.http(f"repository:{team}/model:pull,push") as c:
        r = c.post(f"/v2/{team}/model/blobs/uploads/")
    assert r.status_code == 403, r.text
    message = r.json()["errors"][0]["message"]
    assert message.startswith("access denied") and f"hangar registry cache make-local {team}/model" in message

    made = cache_cli(mirror, "make-local", f"{team}/model")
    assert made.returncode == 0 and upstream in made.stdout, made.stderr
    assert f"{team}/model" not in cache_cli(mirror, "list").stdout
    again = cache_cli(mirror, "make-local", f"{team}/model")
    assert again.returncode == 1 and "not a cached model" in again.stderr
    asked = len(traffic.manifest_requests)
    r = httpx.get(f"{mirror.url}/v2/{team}/model/manifests/latest")
    assert r.status_code == 200 and r.content == raw and "x-hangar-mirror" not in r.headers
    assert len(traffic.manifest_requests) == asked  # no longer checked upstream

    # Its namespace's owner pushes to it with Hangar's client; a stranger is refused as for any local model.
    name = bob.model(f"{team}/model", "v2", size=50_000)
    bob.push(name)
    assert httpx.get(f"{mirror.url}/v2/{team}/model/manifests/v2").content == bob.store.get(name).manifest.raw
    with carol.http(f"repository:{team}/model:pull,push") as c:
        r = c.post(f"/v2/{team}/model/blobs/uploads/")
    assert r.status_code == 403 and f"{carol.name} may not push {team}/model" in r.text
    # Never evicted now.
    assert cache_cli(mirror, "evict", "--max-size", "1KB").returncode == 0
    assert httpx.get(f"{mirror.url}/v2/{team}/model/manifests/latest").content == raw


def test_with_two_workers_concurrent_pulls_of_one_cold_blob_fetch_it_once(
    reference: ReferenceRegistry, counting_proxy: Proxy, make_mirror: Mirror
) -> None:
    data = os.urandom(24 * 1024 * 1024)
    push_plain_model(reference.url, "team/big", "latest", data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upstream, traffic = counting_proxy(reference.url)
    mirror = make_mirror("--upstream", upstream, "--workers", "2")

    def fetch(repo: str, digest: str) -> str:  # a connection each: the two workers share them out
        h = hashlib.sha256()
        try:
            with httpx.Client(timeout=120) as c, c.stream("GET", f"{mirror.url}/v2/{repo}/blobs/{digest}") as r:
                if r.status_code != 200:
                    return f"status {r.status_code}"
                for chunk in r.iter_bytes():
                    h.update(chunk)
        except httpx.HTTPError:
            return "broken off"
        return "sha256:" + h.hexdigest()

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(fetch, ["team/big"] * 10, [digest] * 10))
    assert results == [digest] * 10
    assert traffic.blob_gets[digest] == 1 and traffic.blob_bytes == len(data), mirror.log()
    assert blob_path(mirror, digest).read_bytes() == data
    partial = mirror.data_dir / "mirror" / "partial"
    wait_until(lambda: not list(partial.iterdir()), 10, "the partial file and its lock file to go")

    # A bad byte from the upstream: neither worker stores it, no client gets it whole, no file is left.
    bad = os.urandom(8 * 1024 * 1024)
    push_plain_model(reference.url, "team/bad", "latest", bad)
    bad_digest = "sha256:" + hashlib.sha256(bad).hexdigest()
    traffic.corrupt.add(bad_digest)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(fetch, ["team/bad"] * 6, [bad_digest] * 6))
    assert bad_digest not in results
    wait_until(lambda: not list(partial.iterdir()), 10, "the bad partial file and its lock file to go")
    assert not blob_path(mirror, bad_digest).exists()
