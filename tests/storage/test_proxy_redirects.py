"""Behind a proxy, a pull from an S3-backed registry takes the proxy twice over (#20): the
registry's answers and the 307s to presigned URLs on the object store (a real Swift), whose bytes
are then fetched through the same proxy (tinyproxy with a password), never around it."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from client.config import load
from client.pull import pull
from client.push import push
from client.store import Store
from tests.client.conftest import make_model
from tests.client.test_proxy import PROXY_ENV, Tinyproxy
from tests.servers import RegistryProcess
from tests.swift import SwiftS3

pytestmark = pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="tinyproxy is installed by scripts/setup.sh")


def test_redirects_to_the_object_store_go_through_the_proxy(
    s3_registry: RegistryProcess, swift: SwiftS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load({"HANGAR_HOME": str(tmp_path / "home")})
    store = Store(settings.models).ensure()
    name = make_model(store, f"{s3_registry.host}/corp/stored", os.urandom(6 * 1024 * 1024))
    asyncio.run(push(name, store, settings))  # directly: no proxy yet

    proxy = Tinyproxy(tmp_path).start()
    try:
        for var in PROXY_ENV:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url())
        monkeypatch.setenv("HTTPS_PROXY", proxy.url())
        other = load({"HANGAR_HOME": str(tmp_path / "home"), "HANGAR_MODELS": str(tmp_path / "other")})
        result = asyncio.run(pull(name, Store(other.models), other))
        assert result.model.manifest.raw == store.get(name).manifest.raw
        seen = proxy.requests()
    finally:
        proxy.stop()
    layer = store.get(name).manifest.layers[0].digest
    assert any(line.startswith(f"GET http://{s3_registry.host}/v2/corp/stored/") for line in seen), seen
    # The model layer's bytes came from Swift's presigned URL, through the proxy.
    from_store = [line for line in seen if line.startswith(f"GET {swift.endpoint}/")]
    assert from_store, seen
    assert any(layer.hex in line for line in seen if line.startswith(f"GET http://{s3_registry.host}/")), seen
