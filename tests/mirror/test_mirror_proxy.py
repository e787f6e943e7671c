"""The mirror's upstream fetches honour HTTP_PROXY/HTTPS_PROXY/NO_PROXY (#20): a mirror started
with a proxy in its environment reaches its upstream (the reference registry) only through a real
tinyproxy that wants a password, while its own clients reach it directly."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.client.test_proxy import PROXY_ENV, Tinyproxy
from tests.mirror.conftest import push_plain_model
from tests.servers import ReferenceRegistry, RegistryProcess

pytestmark = pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="tinyproxy is installed by scripts/setup.sh")


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[ReferenceRegistry]:
    proc = ReferenceRegistry(tmp_path / "reference").start()
    yield proc
    proc.stop()


def test_upstream_fetches_go_through_the_proxy(
    reference: ReferenceRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, blobs = push_plain_model(reference.url, "team/proxied", "latest", os.urandom(400_000))
    proxy = Tinyproxy(tmp_path).start()
    # The upstream is named "localhost" and the mirror is reached as 127.0.0.1, which NO_PROXY
    # exempts: only the mirror's own outgoing requests can take the proxy.
    upstream = f"http://localhost:{reference.port}"
    for var in PROXY_ENV:
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, proxy.url())
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    mirror = RegistryProcess(tmp_path / "mirror", "", "--auth", "off", "--upstream", f"team={upstream}").start()
    try:
        with httpx.Client(base_url=mirror.url, timeout=60, trust_env=False) as client:
            r = client.get("/v2/team/proxied/manifests/latest")
            assert r.status_code == 200 and r.content == raw
            for digest, data in blobs.items():
                got = client.get(f"/v2/team/proxied/blobs/{digest}", follow_redirects=True)
                assert got.status_code == 200 and got.content == data
        seen = proxy.requests()
        assert any(line.startswith(f"GET {upstream}/v2/team/proxied/manifests/latest") for line in seen), seen
        for digest in blobs:
            assert any(line.split("?")[0] == f"GET {upstream}/v2/team/proxied/blobs/{digest}" for line in seen), seen
        assert not any("127.0.0.1" in line for line in seen)  # its own clients came directly
    finally:
        mirror.stop()
        proxy.stop()
