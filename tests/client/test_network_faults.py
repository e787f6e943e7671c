"""Pulls and pushes across a network that drops connections mid-body, stalls, and crawls (#16),
through a fault-injecting TCP proxy in front of a real registry: each finishes with bounded
retries and the right bytes, and a peer that is really gone is a clear error in bounded time that
a later run resumes from."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client import errors
from client import pull as pull_module
from client import push as push_module
from client.config import ClientSettings, load
from client.pull import pull
from client.push import push
from client.store import Store
from formats.names import ModelName
from tests.client.conftest import make_model
from tests.faultproxy import Fault, FaultProxy
from tests.servers import RegistryProcess

MiB = 1 << 20


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seconds instead of the defaults' 30 s stall limit and 1–32 s back-off."""
    monkeypatch.setattr(pull_module, "backoff", lambda attempt: 0.05)
    monkeypatch.setattr(push_module, "backoff", lambda attempt: 0.05)
    monkeypatch.setattr(pull_module, "STALL_SECONDS", 2.0)


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[Callable[[Callable[[int], Fault | None]], tuple[FaultProxy, str]]]:
    """A registry reachable only through a FaultProxy whose plan the test sets; it names the
    proxy as its public URL, so the signed blob URLs it hands out go through the proxy too."""
    started: list[tuple[FaultProxy, RegistryProcess]] = []

    def make(plan: Callable[[int], Fault | None]) -> tuple[FaultProxy, str]:
        registry = RegistryProcess(tmp_path / "registry", "", "--auth", "off")
        proxy = FaultProxy(registry.port, plan).__enter__()
        registry.extra_args += ["--public-url", f"http://127.0.0.1:{proxy.port}"]
        registry.start()
        started.append((proxy, registry))
        return proxy, f"127.0.0.1:{proxy.port}"

    yield make
    for proxy, registry in started:
        registry.stop()
        proxy.__exit__(None, None, None)


def _model(tmp_path: Path, host: str, size: int) -> tuple[ClientSettings, Store, ModelName]:
    settings = load({"HANGAR_HOME": str(tmp_path / "home")})
    store = Store(settings.models).ensure()
    return settings, store, make_model(store, f"{host}/net/model", os.urandom(size))


def _fresh(tmp_path: Path, label: str) -> tuple[ClientSettings, Store]:
    settings = load({"HANGAR_HOME": str(tmp_path / "home"), "HANGAR_MODELS": str(tmp_path / label)})
    return settings, Store(settings.models)


def _same_blobs(a: Store, b: Store, name: ModelName) -> None:
    assert b.get(name).manifest.raw == a.get(name).manifest.raw
    for blob in a.get(name).manifest.blobs():
        assert b.blob_path(blob.digest).read_bytes() == a.blob_path(blob.digest).read_bytes()


def test_pull_finishes_through_connections_dropped_mid_body(faulty, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proxy, host = faulty(lambda n: None)
    settings, store, name = _model(tmp_path, host, 12 * MiB)
    asyncio.run(push(name, store, settings))
    proxy.plan = lambda n: Fault("drop", after=MiB)  # every connection: 1 MiB, then cut
    other_settings, other = _fresh(tmp_path, "pulled")
    asyncio.run(pull(name, other, other_settings))
    _same_blobs(store, other, name)
    assert proxy.counts.dropped >= 8  # 12 MiB through 1 MiB connections: it really was cut up


def test_pull_finishes_through_stalls(faulty, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proxy, host = faulty(lambda n: None)
    settings, store, name = _model(tmp_path, host, 6 * MiB)
    asyncio.run(push(name, store, settings))
    first = proxy.counts.connections
    # The next three connections go silent after 1 MiB (open, no bytes); then the network heals.
    proxy.plan = lambda n: Fault("stall", after=MiB) if n < first + 3 else None
    other_settings, other = _fresh(tmp_path, "pulled")
    started = time.monotonic()
    asyncio.run(pull(name, other, other_settings))
    _same_blobs(store, other, name)
    assert proxy.counts.stalled >= 1
    assert time.monotonic() - started < 60  # each stall costs the 2 s stall limit, not a hang


def test_pull_finishes_on_a_slow_network(faulty, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proxy, host = faulty(lambda n: None)
    settings, store, name = _model(tmp_path, host, 3 * MiB)
    asyncio.run(push(name, store, settings))
    proxy.plan = lambda n: Fault("slow", rate=2 * MiB)
    other_settings, other = _fresh(tmp_path, "pulled")
    asyncio.run(pull(name, other, other_settings))
    _same_blobs(store, other, name)


def test_push_finishes_through_uploads_cut_mid_body(faulty, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proxy, host = faulty(lambda n: None)
    settings, store, name = _model(tmp_path, host, 10 * MiB)
    # Client to registry: each of the first ten connections is cut after 3 MiB of request bytes,
    # more cuts than the retry budget: what arrives before each cut counts as progress.
    proxy.plan = lambda n: Fault("drop", after=3 * MiB, direction="up") if n < 10 else None
    asyncio.run(push(name, store, settings))
    assert proxy.counts.dropped >= 1
    proxy.plan = lambda n: None
    other_settings, other = _fresh(tmp_path, "pulled")
    asyncio.run(pull(name, other, other_settings))
    _same_blobs(store, other, name)


def test_a_peer_really_gone_is_a_clear_error_and_a_later_pull_resumes(faulty, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proxy, host = faulty(lambda n: None)
    settings, store, name = _model(tmp_path, host, 8 * MiB)
    asyncio.run(push(name, store, settings))
    # 2 MiB get through, then every new connection is closed at once: the registry is "gone".
    budget = {"left": 2 * MiB}

    def plan(n: int) -> Fault | None:
        if budget["left"] <= 0:
            return Fault("refuse")
        budget["left"] -= MiB
        return Fault("drop", after=MiB)

    proxy.plan = plan
    other_settings, other = _fresh(tmp_path, "pulled")
    started = time.monotonic()
    with pytest.raises(errors.RegistryError) as raised:
        asyncio.run(pull(name, other, other_settings))
    assert time.monotonic() - started < 60
    message = str(raised.value)
    assert "giving up after" in message or "cannot reach" in message or "connection" in message, message
    assert not other.manifest_path(name).exists()  # nothing half-made is visible
    assert proxy.counts.refused >= 1

    proxy.plan = lambda n: None  # back again: the pull resumes, fetching less than the whole
    before = proxy.counts.down_bytes
    result = asyncio.run(pull(name, other, other_settings))
    _same_blobs(store, other, name)
    assert result.bytes_fetched < 8 * MiB and proxy.counts.down_bytes - before < 8 * MiB
