"""Security headers on every answer a browser may render (#16): the registry's API, blobs, errors,
probes and web pages, and ``hangar serve``'s API, all say ``X-Content-Type-Options: nosniff`` and
carry a Content-Security-Policy: the web site's own (its script and style, nothing else), and
everywhere else one under which nothing runs (``default-src 'none'``, ``sandbox``, no framing)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import RegistryProcess, RuntimeProcess

INERT = "default-src 'none'; frame-ancestors 'none'; sandbox"


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(tmp_path_factory.mktemp("headers") / "data", "", "--auth", "off").start()
    yield proc
    proc.stop()


def test_every_registry_answer_has_the_safety_headers(open_registry: RegistryProcess) -> None:
    html = b"<html><script>alert(1)</script></html>"
    digest = "sha256:" + hashlib.sha256(html).hexdigest()
    with httpx.Client(base_url=open_registry.url, timeout=30) as client:
        started = client.post("/v2/h/blob/blobs/uploads/")
        done = client.put(started.headers["location"], params={"digest": digest}, content=html)
        assert done.status_code == 201
        answers = {
            "blob": client.get(f"/v2/h/blob/blobs/{digest}"),
            "api": client.get("/v2/"),
            "api error": client.get("/v2/h/none/manifests/latest"),
            "catalog": client.get("/v2/_catalog"),
            "token": client.get("/token"),
            "probe": client.get("/healthz"),
            "metrics": client.get("/metrics"),
            "search api": client.get("/api/search", params={"q": "x"}),
            "static": client.get("/static/site.css"),
            "upload": started,
        }
        pages = {"home": client.get("/"), "search": client.get("/search?q=x"), "page 404": client.get("/no/such/page")}
    for what, r in answers.items():
        assert r.headers.get("x-content-type-options") == "nosniff", what
        assert r.headers.get("content-security-policy") == INERT, (what, r.headers.get("content-security-policy"))
    for what, r in pages.items():
        assert r.headers.get("x-content-type-options") == "nosniff", what
        policy = r.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, what
        assert r.headers.get_list("content-security-policy") == [policy], what  # one policy, not two


def test_every_daemon_answer_has_the_safety_headers(tmp_path: Path) -> None:
    daemon = RuntimeProcess(tmp_path / "home").start()
    try:
        with httpx.Client(base_url=daemon.url, timeout=30) as client:
            answers = {
                "root": client.get("/"),
                "tags": client.get("/api/tags"),
                "version": client.get("/api/version"),
                "openai": client.get("/v1/models"),
                "not found": client.post("/api/show", json={"model": "missing"}),
                "guard refusal": client.get("/api/tags", headers={"Origin": "https://evil.example"}),
                "wrong type": client.post("/api/show", content="x", headers={"Content-Type": "text/plain"}),
            }
    finally:
        daemon.stop()
    assert answers["guard refusal"].status_code == 403 and answers["wrong type"].status_code == 415
    for what, r in answers.items():
        assert r.headers.get("x-content-type-options") == "nosniff", what
        assert r.headers.get("content-security-policy") == INERT, what
