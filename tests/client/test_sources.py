"""Where bytes come from: Ollama-style redirects to another host, mirrors, a bandwidth limit."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from client.config import load
from client.pull import PullOptions, pull
from client.push import push
from client.store import Store
from registry.oci.names import ModelName
from tests.client.conftest import make_model
from tests.frontends import ThreadedServer, cdn_app, ollama_front_app
from tests.servers import free_port


def test_ollama_style_redirect_to_another_host_gets_no_credentials(people, auth_registry) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    alice.account.set_default_visibility(alice.name, "private")  # so the client holds a token
    seen: list[dict[str, str]] = []
    with ThreadedServer(cdn_app(auth_registry.data_dir / "blobs" / "sha256", seen)) as cdn:
        # "localhost" is another host name than the front's "127.0.0.1", as a CDN would be.
        front_app = ollama_front_app(auth_registry.url, f"http://localhost:{cdn.port}")
        with ThreadedServer(front_app) as front:
            name = make_model(alice.store, f"127.0.0.1:{front.port}/{alice.name}/model", os.urandom(3_000_000))
            alice.push(name)
            other = Store(alice.settings.home / "other-store")
            result = asyncio.run(pull(name, other, alice.settings, PullOptions(part_size=1_000_000)))
    assert result.model.manifest.raw == alice.store.get(name).manifest.raw
    ranges = [h.get("range") for h in seen]
    assert len(seen) >= 3 and all(r and r.startswith("bytes=") for r in ranges)
    assert all("authorization" not in h for h in seen)  # the token never leaves the registry's host


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
