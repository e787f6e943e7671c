"""Corporate networks (#20): every request of a pull and a push, and ``hangar serve``'s pulls, go
through the forward proxy named in HTTPS_PROXY/HTTP_PROXY (a real tinyproxy that wants a
password), NO_PROXY is honoured, a proxy asking for a password is a clear error, and TLS through the
proxy's CONNECT tunnel is verified with the registry's own CA bundle."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client import errors
from client.config import load
from client.pull import pull
from client.push import push
from client.store import Store
from tests.client.conftest import make_model
from tests.client.test_errors import _self_signed
from tests.servers import RegistryProcess, RuntimeProcess, free_port, wait_until

pytestmark = pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="tinyproxy is installed by scripts/setup.sh")

USER, PASSWORD = "corp", "s3cret-proxy"
PROXY_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


class Tinyproxy:
    """Debian's tinyproxy on 127.0.0.1 with Basic auth, logging every request it forwards."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.log_path = directory / "tinyproxy.log"
        self.conf = directory / "tinyproxy.conf"
        # No User/Group: run as whoever runs the tests (as root it then stays root, which only a
        # test may do); no ConnectPort: CONNECT to any port, the registry's included.
        self.conf.write_text(
            f'Port {self.port}\nListen 127.0.0.1\nTimeout 60\nLogFile "{self.log_path}"\nLogLevel Info\n'
            f"MaxClients 100\nBasicAuth {USER} {PASSWORD}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(self.conf)], stderr=subprocess.DEVNULL)

        def listening() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1, trust_env=False).status_code > 0
            except httpx.TransportError:
                return False

        wait_until(listening, 15, "tinyproxy to listen")
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def requests(self) -> list[str]:
        """The request lines it forwarded ("GET http://…", "CONNECT 127.0.0.1:…"); not the
        readiness probe's ``GET /``, which asked the proxy itself."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        lines = re.findall(r"Request \(file descriptor \d+\): (\S+ \S+)", text)
        return [line for line in lines if line != "GET /"]


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    tp = Tinyproxy(tmp_path).start()
    yield tp
    tp.stop()


@pytest.fixture
def open_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(tmp_path / "registry", "", "--auth", "off").start()
    yield proc
    proc.stop()


def _through(monkeypatch: pytest.MonkeyPatch, proxy_url: str, no_proxy: str = "") -> None:
    for var in PROXY_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.setenv("HTTPS_PROXY", proxy_url)
    if no_proxy:
        monkeypatch.setenv("NO_PROXY", no_proxy)


def test_push_and_pull_go_through_the_proxy(
    proxy: Tinyproxy, open_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load({"HANGAR_HOME": str(tmp_path / "home")})
    store = Store(settings.models).ensure()
    name = make_model(store, f"{open_registry.host}/corp/model", os.urandom(3_000_000))
    layers = [d.digest for d in store.get(name).manifest.layers]
    _through(monkeypatch, proxy.url())

    asyncio.run(push(name, store, settings))
    other = load({"HANGAR_HOME": str(tmp_path / "home"), "HANGAR_MODELS": str(tmp_path / "other")})
    result = asyncio.run(pull(name, Store(other.models), other))

    assert result.model.manifest.raw == store.get(name).manifest.raw
    base = f"http://{open_registry.host}/v2/corp/model"
    seen = proxy.requests()
    assert f"PUT {base}/manifests/latest" in seen
    assert any(line.startswith(f"POST {base}/blobs/uploads/") for line in seen)
    for digest in layers:  # every blob's bytes came back through the proxy (aiohttp's session)
        assert any(line.split("?")[0] == f"GET {base}/blobs/{digest}" for line in seen), (digest, seen)
    # …and nothing reached the registry any other way: with the proxy gone, the same pull fails.
    proxy.stop()
    third = load({"HANGAR_HOME": str(tmp_path / "home"), "HANGAR_MODELS": str(tmp_path / "third")})
    with pytest.raises(errors.RegistryError):
        asyncio.run(pull(name, Store(third.models), third))
    assert not Store(third.models).manifest_path(name).exists()


def test_no_proxy_reaches_the_registry_directly(
    proxy: Tinyproxy, open_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load({"HANGAR_HOME": str(tmp_path / "home")})
    store = Store(settings.models).ensure()
    name = make_model(store, f"{open_registry.host}/corp/direct")
    _through(monkeypatch, proxy.url(), no_proxy="127.0.0.1,localhost")
    asyncio.run(push(name, store, settings))
    other = load({"HANGAR_HOME": str(tmp_path / "home"), "HANGAR_MODELS": str(tmp_path / "other")})
    asyncio.run(pull(name, Store(other.models), other))
    assert Store(other.models).manifest_path(name).exists()
    assert proxy.requests() == []


def test_a_proxy_wanting_a_password_is_a_clear_error(
    proxy: Tinyproxy, open_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load({"HANGAR_HOME": str(tmp_path / "home")})
    store = Store(settings.models).ensure()
    name = make_model(store, f"{open_registry.host}/corp/refused")
    _through(monkeypatch, f"http://127.0.0.1:{proxy.port}")  # no USER:PASSWORD@
    with pytest.raises(errors.RequestFailed, match=r"proxy asked for credentials \(407\).*USER:PASSWORD@HOST:PORT"):
        asyncio.run(push(name, store, settings))


def test_tls_through_the_proxy_uses_the_ca_bundle(
    proxy: Tinyproxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _self_signed(tmp_path)
    registry = RegistryProcess(
        tmp_path / "tls", "", "--auth", "off", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)
    ).start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        (home / "config.toml").write_text(f'[registries."{registry.host}"]\ninsecure = false\nca_bundle = "{cert}"\n')
        settings = load({"HANGAR_HOME": str(home)})
        store = Store(settings.models).ensure()
        name = make_model(store, f"{registry.host}/corp/secure", os.urandom(500_000))
        _through(monkeypatch, proxy.url())
        asyncio.run(push(name, store, settings))
        other = load({"HANGAR_HOME": str(home), "HANGAR_MODELS": str(tmp_path / "other")})
        result = asyncio.run(pull(name, Store(other.models), other))
        assert result.model.manifest.raw == store.get(name).manifest.raw
        # https goes through CONNECT tunnels only: the proxy saw where, never what.
        seen = proxy.requests()
        assert seen and all(line == f"CONNECT {registry.host}" for line in seen), seen
        assert len(seen) >= 2  # httpx for the manifest and uploads, aiohttp for the blobs
    finally:
        registry.stop()


def test_hangar_serve_pulls_through_the_proxy(proxy: Tinyproxy, open_registry: RegistryProcess, tmp_path: Path) -> None:
    settings = load({"HANGAR_HOME": str(tmp_path / "pusher")})
    store = Store(settings.models).ensure()
    name = make_model(store, f"{open_registry.host}/corp/served")
    asyncio.run(push(name, store, settings))  # directly: this process has no proxy set
    assert proxy.requests() == []

    # Lower-case names win over upper-case ones (an empty one unsets), so set both.
    env = {var: "" for var in PROXY_ENV} | {var: proxy.url() for var in PROXY_ENV if "NO_" not in var.upper()}
    daemon = RuntimeProcess(tmp_path / "daemon", **env).start()
    try:
        answer = httpx.post(f"{daemon.url}/api/pull", json={"model": str(name), "stream": False}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "success"
    finally:
        daemon.stop()
    seen = proxy.requests()
    assert f"GET http://{open_registry.host}/v2/corp/served/manifests/latest" in seen, seen
    model_layer = store.get(name).manifest.layers[0].digest
    assert any(
        line.split("?")[0] == f"GET http://{open_registry.host}/v2/corp/served/blobs/{model_layer}" for line in seen
    )
