"""PostgreSQL restarted under a running registry (#16): while it is down, every API request that
needs it fails cleanly, 503 with ``Retry-After`` and the distribution error envelope (never a
500, never a hung request), the process stays up, and pushes and pulls work again once it is
back, without restarting the registry. An upload session begun before the outage continues."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.config import load
from client.pull import pull
from client.push import push
from client.store import Store
from formats.digest import Digest
from tests.client.conftest import make_model
from tests.servers import PostgresCluster, RegistryProcess


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A cluster of this test's own, since it is stopped (the session's serves other tests)."""
    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


def test_requests_answer_503_while_postgres_is_down_and_work_after(
    own_postgres: PostgresCluster, tmp_path: Path
) -> None:
    registry = RegistryProcess(tmp_path / "data", own_postgres.create_database(), "--auth", "off").start()
    settings = load({"HANGAR_HOME": str(tmp_path / "home")})
    store = Store(settings.models).ensure()
    before = make_model(store, f"{registry.host}/db/before", os.urandom(300_000))
    try:
        asyncio.run(push(before, store, settings))
        layer = store.get(before).manifest.layers[0].digest
        with httpx.Client(base_url=registry.url, timeout=30) as client:
            # An upload begun before the outage, one chunk in.
            data = os.urandom(200_000)
            started = client.post("/v2/db/during/blobs/uploads/")
            assert started.status_code == 202
            location = started.headers["location"]
            first = client.patch(location, content=data[:100_000], headers={"Content-Range": "0-99999"})
            assert first.status_code == 202
            location = first.headers["location"]

            own_postgres.stop_server()
            for method, path in [
                ("GET", "/v2/db/before/manifests/latest"),
                ("HEAD", "/v2/db/before/manifests/latest"),
                ("HEAD", f"/v2/db/before/blobs/{layer}"),
                ("POST", "/v2/db/other/blobs/uploads/"),
                ("GET", "/v2/_catalog"),
                ("GET", "/v2/db/before/tags/list"),
            ]:
                r = client.request(method, path)
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert r.headers["retry-after"] == "5"
                if method != "HEAD":
                    assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
                    assert "database is unavailable" in r.json()["errors"][0]["message"]
            assert client.get("/healthz").status_code == 200  # the process itself is fine
            log = registry.log()
            assert "database unavailable on GET /v2/db/before/manifests/latest" in log
            assert "unhandled error" not in log  # no 500 with a traceback for an outage

            own_postgres.start_server()
            # The same registry process: the session continues, and pushes and pulls work.
            second = client.patch(location, content=data[100_000:], headers={"Content-Range": "100000-199999"})
            assert second.status_code == 202, second.text
            done = client.put(second.headers["location"], params={"digest": str(Digest.of_bytes(data))})
            assert done.status_code == 201, done.text
            assert client.get(f"/v2/db/during/blobs/{Digest.of_bytes(data)}").content == data
        after = make_model(store, f"{registry.host}/db/after", os.urandom(300_000))
        asyncio.run(push(after, store, settings))
        other = load({"HANGAR_HOME": str(tmp_path / "home"), "HANGAR_MODELS": str(tmp_path / "other")})
        for name in (before, after):
            result = asyncio.run(pull(name, Store(other.models), other))
            assert result.model.manifest.raw == store.get(name).manifest.raw
        assert registry.proc is not None and registry.proc.poll() is None  # never restarted
    finally:
        registry.stop()
