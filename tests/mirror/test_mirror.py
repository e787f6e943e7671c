"""The pull-through mirror end to end: real registries as upstreams (the reference
``docker-registry`` and a Hangar registry with its auth on), a counting proxy between the mirror
and the upstream, and real clients (Hangar's, and the Ollama-wire emulation) in front."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from client.config import load
from client.pull import pull
from client.store import Store
from formats.names import ModelName
from tests.mirror.conftest import Traffic, blob_path, push_plain_model
from tests.ollama_wire import OllamaWireClient
from tests.people import Person, unique
from tests.servers import REPO_ROOT, ReferenceRegistry, RegistryProcess, wait_until

Proxy = Callable[[str], tuple[str, Traffic]]
Mirror = Callable[..., RegistryProcess]


def pull_into(home: Path, name: str) -> tuple[bytes, int]:
    """Pull ``name`` into a new store under ``home``: (manifest bytes, blob bytes fetched)."""
    settings = load({"HANGAR_HOME": str(home)})
    store = Store(settings.models).ensure()
    result = asyncio.run(pull(ModelName.parse(name), store, settings))
    for layer in result.model.manifest.blobs():
        assert hashlib.sha256(store.blob_path(layer.digest).read_bytes()).hexdigest() == layer.digest.hex
    return result.model.manifest.raw, result.bytes_fetched


def wait_cached(mirror: RegistryProcess, repo: str, tag: str, timeout: float = 30) -> None:
    """Until the mirror stored the manifest (after its blobs): ``hit`` on a GET."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{mirror.url}/v2/{repo}/manifests/{tag}")
        if r.headers.get("x-hangar-mirror") == "hit":
            return
        time.sleep(0.1)
    raise AssertionError(f"{repo}:{tag} was not cached")


def cache_cli(mirror: RegistryProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "registry", "cache", *args, "--data-dir", str(mirror.data_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[ReferenceRegistry]:
    proc = ReferenceRegistry(tmp_path / "reference").start()
    yield proc
    proc.stop()


def test_reference_upstream_first_pull_fetches_second_pull_transfers_nothing_and_tags_move(
    reference: ReferenceRegistry, counting_proxy: Proxy, make_mirror: Mirror, tmp_path: Path
) -> None:
    raw, blobs = push_plain_model(reference.url, "team/model", "latest", os.urandom(1_500_000))
    upstream, traffic = counting_proxy(reference.url)
    mirror = make_mirror("--upstream", f"team={upstream}", "--upstream-check-interval", "3s")

    got, fetched = pull_into(tmp_path / "a", f"{mirror.host}/team/model:latest")
    assert got == raw
    assert traffic.blob_bytes == sum(len(b) for b in blobs.values())
    assert all(n == 1 for n in traffic.blob_gets.values()) and set(traffic.blob_gets) == set(blobs)
    wait_cached(mirror, "team/model", "latest")

    before = traffic.blob_bytes
    got, fetched = pull_into(tmp_path / "b", f"{mirror.host}/team/model:latest")
    assert got == raw and fetched == sum(len(b) for b in blobs.values())
    assert traffic.blob_bytes == before  # zero bytes from the upstream

    # The tag moves upstream: within the interval the mirror answers what it has, after it the new one.
    time.sleep(3.1)
    r = httpx.get(f"{mirror.url}/v2/team/model/manifests/latest")  # past the interval: asks (HEAD)
    assert r.content == raw and r.headers["x-hangar-mirror"] == "revalidated"
    assert traffic.manifest_requests[-1] == "HEAD /v2/team/model/manifests/latest"
    raw2, _ = push_plain_model(reference.url, "team/model", "latest", os.urandom(200_000))
    r = httpx.get(f"{mirror.url}/v2/team/model/manifests/latest")
    assert r.content == raw and r.headers["x-hangar-mirror"] == "hit"
    assert r.headers["x-hangar-upstream"] == upstream
    time.sleep(3.1)
    got, _ = pull_into(tmp_path / "c", f"{mirror.host}/team/model:latest")
    assert got == raw2
    # Another namespace is not routed to this upstream: the mirror's own (empty) registry answers.
    assert httpx.get(f"{mirror.url}/v2/other/model/manifests/latest").status_code == 404


def test_hangar_upstream_with_auth_key_stale_when_down_and_pushes_refused(  # type: ignore[no-untyped-def]
    make_registry, counting_proxy: Proxy, make_mirror: Mirror, tmp_path: Path
) -> None:
    upstream_registry: RegistryProcess = make_registry("--auth", "required", "--signup", "open")
    alice = Person(upstream_registry, tmp_path / "alice", unique("alice")).signup()
    alice.account.set_default_visibility(alice.name, "private")  # anonymous pulls are refused
    name = alice.model(f"{alice.name}/model", size=1_000_000)
    alice.push(name)
    blobs_size = sum(d.size for d in alice.store.get(name).manifest.blobs())
    assert httpx.get(f"{upstream_registry.url}/v2/{alice.name}/model/manifests/latest").status_code == 401

    upstream, traffic = counting_proxy(upstream_registry.url)
    credentials = tmp_path / "upstreams.toml"
    credentials.write_text(f'[upstream."{upstream}"]\nkey = "{alice.settings.key_path}"\n')
    mirror = make_mirror(
        "--upstream", upstream, "--upstream-credentials", str(credentials), "--upstream-check-interval", "1s"
    )
    path = f"{mirror.host}/{alice.name}/model:latest"
    raw = alice.store.get(name).manifest.raw
    assert pull_into(tmp_path / "a", path)[0] == raw
    assert traffic.blob_bytes == blobs_size, (traffic, mirror.log())
    wait_cached(mirror, f"{alice.name}/model", "latest")
    assert pull_into(tmp_path / "b", path)[0] == raw
    assert traffic.blob_bytes == blobs_size
    assert str(alice.settings.key_path) not in mirror.log()  # credentials are never logged

    # The upstream goes away: cached models still pull, and the answer says it is stale.
    upstream_registry.stop()
    time.sleep(1.2)
    r = httpx.get(f"{mirror.url}/v2/{alice.name}/model/manifests/latest")
    assert r.status_code == 200 and r.headers["x-hangar-mirror"] == "stale"
    assert pull_into(tmp_path / "c", path)[0] == raw
    assert "serving the cached" in mirror.log()
    # A model it never cached: a clear 503 naming the upstream.
    r = httpx.get(f"{mirror.url}/v2/{alice.name}/other/manifests/latest")
    assert r.status_code == 503 and upstream in r.json()["errors"][0]["message"]

    # Every namespace is routed to the upstream here: pushes are refused, saying why.
    r = httpx.post(f"{mirror.url}/v2/{alice.name}/mine/blobs/uploads/")
    assert r.status_code == 403
    error = r.json()["errors"][0]
    assert error["code"] == "DENIED" and f"namespace {alice.name} is a mirror of {upstream}" in error["message"]


def test_twenty_concurrent_pulls_of_one_cold_blob_download_it_once(
    reference: ReferenceRegistry, counting_proxy: Proxy, make_mirror: Mirror
) -> None:
    data = os.urandom(24 * 1024 * 1024)
    _, _blobs = push_plain_model(reference.url, "team/big", "latest", data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upstream, traffic = counting_proxy(reference.url)
    mirror = make_mirror("--upstream", upstream)

    def fetch(i: int) -> str:
        with httpx.Client(timeout=120) as c, c.stream("GET", f"{mirror.url}/v2/team/big/blobs/{digest}") as r:
            assert r.status_code == 200
            h = hashlib.sha256()
            for chunk in r.iter_bytes():
                h.update(chunk)
            return "sha256:" + h.hexdigest()

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(fetch, range(20)))
    assert results == [digest] * 20
    assert traffic.blob_gets[digest] == 1 and traffic.blob_bytes == len(data)
    assert blob_path(mirror, digest).read_bytes() == data
    # Ranges of a cached blob come from the store.
    r = httpx.get(f"{mirror.url}/v2/team/big/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert traffic.blob_gets[digest] == 1
    # Its 16 MiB chunk sums are computed in the background once it is stored.
    deadline = time.monotonic() + 30
    while "mirror: chunk sums" not in mirror.log():
        r = httpx.get(f"{mirror.url}/v2/team/big/chunksums/{digest}")
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    half = 16 * 1024 * 1024
    expected = [hashlib.sha256(data[:half]).hexdigest(), hashlib.sha256(data[half:]).hexdigest()]
    assert [line.split()[0].removeprefix("sha256:") for line in r.text.splitlines()] == expected


def test_a_corrupted_upstream_byte_is_never_cached_and_a_cut_fetch_resumes(
    reference: ReferenceRegistry, counting_proxy: Proxy, make_mirror: Mirror
) -> None:
    data = os.urandom(3_000_000)
    push_plain_model(reference.url, "team/bad", "latest", data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upstream, traffic = counting_proxy(reference.url)
    mirror = make_mirror("--upstream", upstream)

    traffic.corrupt.add(digest)
    with httpx.Client(timeout=60) as c:
        try:
            body = c.get(f"{mirror.url}/v2/team/bad/blobs/{digest}").content
        except httpx.HTTPError:
            body = b""  # the mirror breaks the response off when the digest does not match
    assert hashlib.sha256(body).hexdigest() != digest.removeprefix("sha256:")
    time.sleep(0.5)
    assert not blob_path(mirror, digest).exists()
    assert not list((mirror.data_dir / "mirror" / "partial").iterdir())

    traffic.corrupt.clear()
    traffic.cut_after[digest] = 1_000_000  # the next fetch breaks off once; the mirror resumes it
    r = httpx.get(f"{mirror.url}/v2/team/bad/blobs/{digest}", timeout=60)
    assert r.content == data
    # Streamed to the client while it arrived; stored once its sha256 verified, a moment later.
    wait_until(lambda: blob_path(mirror, digest).exists(), 30, "the verified blob to be stored")
    assert blob_path(mirror, digest).read_bytes() == data
    assert traffic.ranges[-1].startswith("bytes=") and int(traffic.ranges[-1][6:].rstrip("-")) > 0


def test_eviction_keeps_the_cache_under_its_limit_and_spares_pinned_models(
    reference: ReferenceRegistry, counting_proxy: Proxy, make_mirror: Mirror
) -> None:
    models = {}
    for name in ("one", "two", "three"):
        models[name] = push_plain_model(reference.url, f"team/{name}", "latest", os.urandom(1_000_000))
    upstream, _ = counting_proxy(reference.url)
    mirror = make_mirror("--upstream", upstream, "--cache-max-size", "2500KB")
    client = OllamaWireClient(mirror.url, min_part=1_000_000)

    def ollama_pull(name: str, dest: Path) -> None:
        dest.mkdir()
        raw, files = client.pull(f"team/{name}", "latest", dest)
        assert raw == models[name][0]
        for digest, path in files.items():
            assert path.read_bytes() == models[name][1][digest]
        wait_cached(mirror, f"team/{name}", "latest")

    try:
        ollama_pull("one", mirror.data_dir.parent / "o1")
        time.sleep(0.1)
        ollama_pull("two", mirror.data_dir.parent / "o2")
        pinned = cache_cli(mirror, "pin", "team/one")
        assert pinned.returncode == 0, pinned.stderr
        ollama_pull("three", mirror.data_dir.parent / "o3")
    finally:
        client.close()
    listed = cache_cli(mirror, "list")
    assert listed.returncode == 0, listed.stderr
    assert "team/one" in listed.stdout and "team/three" in listed.stdout and "team/two" not in listed.stdout
    weights = {name: next(d for d, b in m[1].items() if len(b) == 1_000_000) for name, m in models.items()}
    assert blob_path(mirror, weights["one"]).exists() and blob_path(mirror, weights["three"]).exists()
    assert not blob_path(mirror, weights["two"]).exists()
    # Evicted, it is fetched again on demand (and three, now the least recently used, goes).
    r = httpx.get(f"{mirror.url}/v2/team/two/manifests/latest")
    assert r.status_code == 200 and r.headers["x-hangar-mirror"] == "miss"
    wait_cached(mirror, "team/two", "latest")
    after = cache_cli(mirror, "list").stdout
    assert "team/two" in after and "team/three" not in after and "team/one" in after
    # By hand: one model, or down to a size (pinned models stay).
    out = cache_cli(mirror, "evict", "team/two")
    assert out.returncode == 0 and "evicted team/two" in out.stdout
    assert "team/two" not in cache_cli(mirror, "list").stdout
    assert cache_cli(mirror, "evict", "team/nothing").returncode == 1


def test_a_local_repository_wins_over_the_upstream_and_still_takes_pushes(
    reference: ReferenceRegistry, counting_proxy: Proxy, make_mirror: Mirror
) -> None:
    push_plain_model(reference.url, "team/gemma", "latest", os.urandom(10_000))
    upstream, traffic = counting_proxy(reference.url)
    mirror = make_mirror()  # a registry of its own first, with team/gemma
    local, _ = push_plain_model(mirror.url, "team/gemma", "latest", os.urandom(10_000))
    mirror.extra_args += ["--upstream", f"team={upstream}"]
    mirror.restart()
    r = httpx.get(f"{mirror.url}/v2/team/gemma/manifests/latest")
    assert r.content == local and "x-hangar-mirror" not in r.headers
    assert not traffic.manifest_requests
    again, _ = push_plain_model(mirror.url, "team/gemma", "v2", os.urandom(10_000))  # a local repository
    assert httpx.get(f"{mirror.url}/v2/team/gemma/manifests/v2").content == again
    r = httpx.post(f"{mirror.url}/v2/team/other/blobs/uploads/")
    assert r.status_code == 403 and "is a mirror of" in r.text


def test_the_clients_mirror_setting_falls_back_to_the_origin_when_the_mirror_fails(
    reference: ReferenceRegistry, counting_proxy: Proxy, make_mirror: Mirror, tmp_path: Path
) -> None:
    origin = make_mirror()  # a plain Hangar registry: the origin the names point at
    raw, _ = push_plain_model(origin.url, "team/model", "latest", os.urandom(300_000))
    upstream, traffic = counting_proxy(reference.url)  # the mirror's upstream lacks the model, then is down
    mirror = make_mirror("--upstream", upstream)
    home = tmp_path / "client"
    home.mkdir()
    (home / "config.toml").write_text(f'[registries."{origin.host}"]\nmirror = "{mirror.url}"\n')
    settings = load({"HANGAR_HOME": str(home)})
    store = Store(settings.models).ensure()
    events: list[str] = []

    def pull_once() -> str:
        result = asyncio.run(
            pull(
                ModelName.parse(f"{origin.host}/team/model"),
                store,
                settings,
                progress=lambda e: events.append(e.status),
            )
        )
        assert result.model.manifest.raw == raw
        return result.registry

    assert pull_once() == origin.url  # the mirror's upstream has no such model: 404, then the origin
    traffic.down = True  # now the mirror answers 503 (its upstream is gone, nothing cached)
    store = Store(settings.models.parent / "other").ensure()
    assert pull_once() == origin.url
    assert sum("mirror" in e and "failed" in e for e in events) == 2


def test_a_mirror_with_auth_on_serves_upstream_models_to_anonymous_pulls(
    reference: ReferenceRegistry, counting_proxy: Proxy, make_mirror: Mirror, tmp_path: Path
) -> None:
    raw, _ = push_plain_model(reference.url, "library/tiny", "latest", os.urandom(100_000))
    upstream, _ = counting_proxy(reference.url)
    mirror = make_mirror("--auth", "required", "--upstream", f"library={upstream}")
    # Not cached yet, so no repository here: the token service still grants the pull.
    assert pull_into(tmp_path / "a", f"{mirror.host}/library/tiny:latest")[0] == raw
    wait_cached(mirror, "library/tiny", "latest")
    assert pull_into(tmp_path / "b", f"{mirror.host}/library/tiny")[0] == raw
    # A cached model is on the web site as any other (its facts read once, as for a push).
    page = httpx.get(f"{mirror.url}/library/tiny")
    assert page.status_code == 200 and "tiny" in page.text
    assert f'data-upstream="{upstream}"' in page.text and f"cached from {upstream}" in page.text  # says where from
    # Names no upstream serves stay as private as ever: an anonymous pull of one is refused.
    r = httpx.get(f"{mirror.url}/v2/someone/else/manifests/latest")
    assert r.status_code == 401


def test_with_the_upstream_stopped_a_cached_model_still_pulls_and_runs(
    make_mirror: Mirror, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from client.push import push
    from tests.servers import RuntimeProcess
    from tests.tinymodels import add_model

    upstream = make_mirror()  # a plain Hangar registry as the upstream
    author = load({"HANGAR_HOME": str(tmp_path / "author")})
    name = f"{upstream.host}/library/tiny"
    add_model(Store(author.models), name, tiny_models["chat"], params={"num_ctx": 256, "num_predict": 4})
    asyncio.run(push(ModelName.parse(name), Store(author.models), author))
    mirror = make_mirror("--upstream", f"library={upstream.url}", "--upstream-check-interval", "1s")
    raw, _ = pull_into(tmp_path / "first", f"{mirror.host}/library/tiny")
    wait_cached(mirror, "library/tiny", "latest")

    upstream.stop()
    time.sleep(1.1)  # past the interval: the mirror asks the upstream, which is gone
    r = httpx.get(f"{mirror.url}/v2/library/tiny/manifests/latest")
    assert r.status_code == 200 and r.headers["x-hangar-mirror"] == "stale"
    home = tmp_path / "user"
    assert pull_into(home, f"{mirror.host}/library/tiny")[0] == raw
    runtime = RuntimeProcess(home).start()
    try:
        r = httpx.post(
            f"{runtime.url}/api/generate",
            json={"model": f"{mirror.host}/library/tiny", "prompt": "hello", "stream": False},
            timeout=120,
        )
    finally:
        runtime.stop()
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["eval_count"] >= 1
