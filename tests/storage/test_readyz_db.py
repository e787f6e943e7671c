"""``/readyz`` follows the database: 503 naming it while PostgreSQL is down, 200 again once it is
back, without restarting the registry (its pool throws away the connections the outage cut)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import PostgresCluster, RegistryProcess, wait_until


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A cluster of this test's own, since it is stopped (the session's serves other tests)."""
    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


def test_readyz_is_503_naming_the_database_while_it_is_down(own_postgres: PostgresCluster, tmp_path: Path) -> None:
    registry = RegistryProcess(tmp_path / "data", own_postgres.create_database(), "--auth", "off").start()
    try:
        with httpx.Client(base_url=registry.url, timeout=30) as client:
            assert client.get("/readyz").json() == {"status": "ready"}
            # Pooled connections exist before the outage (so their loss is part of the test).
            assert client.get("/v2/_catalog").status_code == 200

            own_postgres.stop_server()
            r = client.get("/readyz")
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["status"] == "unavailable" and list(body["failed"]) == ["database"]
            # What the driver said: which server, and why.
            assert f"port {own_postgres.port} failed: Connection refused" in body["failed"]["database"]
            assert client.get("/healthz").status_code == 200  # the process itself is fine
            # API requests that need the database fail with an error, and the process stays up.
            assert client.get("/v2/_catalog").status_code >= 500

            own_postgres.start_server()
            wait_until(lambda: client.get("/readyz").status_code == 200, 30, "/readyz to recover")
            assert client.get("/readyz").json() == {"status": "ready"}
            assert client.get("/v2/_catalog").status_code == 200
            assert registry.proc is not None and registry.proc.poll() is None  # never restarted
    finally:
        registry.stop()
