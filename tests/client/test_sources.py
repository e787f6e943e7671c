"""Where bytes come from: Ollama-style redirects to another host, mirrors, a bandwidth limit."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.applications import Starlette

from client import pull as pull_module
from client.config import load
from client.pull import PullOptions, PullResult, pull
from client.push import push
from client.store import Store
from formats.names import ModelName
from tests.client.conftest import make_model
from tests.frontends import ThreadedServer, cdn_app, ollama_front_app, rangeless_cdn_app, slow_start_cdn_app
from tests.people import Person, unique
from tests.servers import RegistryProcess, free_port


def test_ollama_style_redirect_to_another_host_gets_no_credentials(tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []
    registry = RegistryProcess(tmp_path / "data", "", "--auth", "required", "--signup", "open")
    with ThreadedServer(cdn_app(registry.data_dir / "blobs" / "sha256", seen)) as cdn:
        # "localhost" is another host name than the front's "127.0.0.1", as a CDN would be.
        front = ThreadedServer(ollama_front_app(registry.url, f"http://localhost:{cdn.port}"))
        # The front is the registry under another name, as a proxy is: the registry must know it
        # (it signs and names only its own origins).
        registry.extra_args += ["--allowed-host", f"127.0.0.1:{front.port}"]
        registry.start()
        try:
            with front:
                alice = Person(registry, tmp_path / "alice", unique("alice")).signup()
                alice.account.set_default_visibility(alice.name, "private")  # so the client holds a token
                alice.signed_in(f"http://127.0.0.1:{front.port}")
                name = make_model(alice.store, f"127.0.0.1:{front.port}/{alice.name}/model", os.urandom(3_000_000))
                alice.push(name)
                other = Store(alice.settings.home / "other-store")
                result = asyncio.run(pull(name, other, alice.settings, PullOptions(part_size=1_000_000)))
        finally:
            registry.stop()
    assert result.model.manifest.raw == alice.store.get(name).manifest.raw
    ranges = [h.get("range") for h in seen]
    assert len(seen) >= 3 and all(r and r.startswith("bytes=") for r in ranges)
    assert all("authorization" not in h for h in seen)  # the token never leaves the registry's origin


def test_pull_through_a_mirror_and_fall_back(make_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mirror, origin = make_registry(), make_registry()
    alice = load({"HANGAR_HOME": str(tmp_path / "alice")})
    a = Store(alice.models).ensure()
    on_mirror = make_model(a, f"{mirror.host}/team/model", os.urandom(200_000))
    asyncio.run(push(on_mirror, a, alice))

    home = tmp_path / "bob"
    home.mkdir()
    (home / "config.toml").write_text(f'[registries."{origin.host}"]\nmirror = "{mirror.url}"\n')
    bob = load({"HANGAR_HOME": str(home)})
    wanted = ModelName.parse(f"{origin.host}/team/model")  # the origin does not even have it
    result = asyncio.run(pull(wanted, Store(bob.models), bob))
    assert result.registry == mirror.url
    assert result.model.manifest.raw == a.get(on_mirror).manifest.raw

    # A mirror that is down: the origin serves.
    on_origin = make_model(a, f"{origin.host}/team/other", os.urandom(1000))
    asyncio.run(push(on_origin, a, alice))
    (home / "config.toml").write_text(f'[registries."{origin.host}"]\nmirror = "http://127.0.0.1:{free_port()}"\n')
    bob = load({"HANGAR_HOME": str(home)})
    events = []
    result = asyncio.run(pull(on_origin, Store(bob.models), bob, progress=events.append))
    assert result.registry == origin.url
    assert any("mirror" in e.status and "failed" in e.status for e in events)


def test_bandwidth_limit(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = load({"HANGAR_HOME": str(tmp_path / "alice")})
    a = Store(alice.models).ensure()
    name = make_model(a, f"{registry.host}/rate/model", os.urandom(6_000_000))
    asyncio.run(push(name, a, alice))
    bob = load({"HANGAR_HOME": str(tmp_path / "bob")})
    start = time.monotonic()
    asyncio.run(pull(name, Store(bob.models), bob, PullOptions(max_rate=2_000_000)))
    # A burst of one second's worth, then 2 MB/s: at least two seconds for 6 MB.
    assert time.monotonic() - start >= 1.8


def pull_via_cdn(
    registry, tmp_path: Path, cdn_for: Callable[[Path], Starlette], size: int, options: PullOptions
) -> tuple[PullResult, bytes, bytes]:  # type: ignore[no-untyped-def]
    """Push a model of ``size`` random bytes through an Ollama-style front whose blob downloads go
    to ``cdn_for(blob directory)``, then pull it into an empty store. Returns the pull's result
    and the weights as pushed and as pulled."""
    alice = load({"HANGAR_HOME": str(tmp_path / "alice")})
    a = Store(alice.models).ensure()
    cdn = ThreadedServer(cdn_for(registry.data_dir / "blobs" / "sha256"))
    with cdn, ThreadedServer(ollama_front_app(registry.url, f"http://localhost:{cdn.port}")) as front:
        name = make_model(a, f"127.0.0.1:{front.port}/team/model", os.urandom(size))
        asyncio.run(push(name, a, alice))
        bob = load({"HANGAR_HOME": str(tmp_path / "bob")})
        b = Store(bob.models)
        result = asyncio.run(pull(name, b, bob, options))
    weights = a.get(name).manifest.layers[0]
    return result, a.blob_path(weights.digest).read_bytes(), b.blob_path(weights.digest).read_bytes()


def test_idle_workers_take_over_the_tail_of_a_slow_part(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """One connection trickles (the first part, at 200 KB/s) while the others are fast: once the
    other parts are done, an idle worker takes the second half of what the slow one still lacks,
    so the pull does not wait for the slowest connection to finish its whole part."""
    monkeypatch.setattr(pull_module, "MIN_SPLIT", 128 * 1024)
    served: list[tuple[int, int]] = []
    result, pushed, pulled = pull_via_cdn(
        registry, tmp_path, lambda blobs: slow_start_cdn_app(blobs, served, 200_000), 4_000_000,
        PullOptions(concurrency=2, part_size=1_000_000),
    )  # fmt: skip
    assert pulled == pushed
    assert result.bytes_fetched == sum(d.size for d in result.model.manifest.blobs())
    slow = [sent for first, sent in served if first == 0 and sent > 100]  # the weights' first part
    taken_over = [first for first, _ in served if 0 < first < 1_000_000]
    assert len(slow) == 1 and slow[0] < 1_000_000, served  # the slow connection stopped early...
    assert taken_over, served  # ...because another one fetched the rest of its part


def test_a_source_that_ignores_range_still_serves_a_one_part_blob(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A server that answers every GET with the whole blob (200) works for a blob that fits in one
    part, as before take-over existed: idle workers only split parts that are streaming a 206."""
    monkeypatch.setattr(pull_module, "MIN_SPLIT", 64 * 1024)
    _, pushed, pulled = pull_via_cdn(
        registry, tmp_path, rangeless_cdn_app, 2_000_000, PullOptions(concurrency=4, part_size=4_000_000)
    )
    assert pulled == pushed


def test_a_blob_in_one_slow_part_is_shared_once_it_streams(
    registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """One part only, on a slow connection: the other workers have nothing to start, wait until
    the part streams, then split it, instead of leaving the whole blob to one connection."""
    monkeypatch.setattr(pull_module, "MIN_SPLIT", 128 * 1024)
    served: list[tuple[int, int]] = []
    _, pushed, pulled = pull_via_cdn(
        registry, tmp_path, lambda blobs: slow_start_cdn_app(blobs, served, 200_000), 2_000_000,
        PullOptions(concurrency=2, part_size=4_000_000),
    )  # fmt: skip
    assert pulled == pushed
    slow = [sent for first, sent in served if first == 0 and sent > 100]
    assert len(slow) == 1 and slow[0] < 1_000_000, served  # the slow one fetched under half
    assert any(0 < first < 2_000_000 for first, _ in served), served
