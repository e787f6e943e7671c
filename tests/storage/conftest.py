"""Fixtures for the storage tests: a real Swift (S3 API) for the whole session, a bucket per test,
registries on that bucket, and a recording proxy in front of Swift."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from registry.storage.s3 import S3Store
from tests.servers import REPO_ROOT, RegistryProcess, registries
from tests.swift import SwiftS3


@pytest.fixture(scope="session")
def swift() -> Iterator[SwiftS3]:
    server = SwiftS3()
    yield server
    server.stop()


@pytest.fixture
def s3_env(swift: SwiftS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS variables naming the Swift, set for this test (and the processes it starts)."""
    env = swift.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def s3_url(swift: SwiftS3, s3_env: dict[str, str]) -> str:
    """``s3://`` URL of a fresh bucket (with a prefix, as a shared bucket would be used)."""
    bucket = swift.create_bucket(f"hangar-{uuid.uuid4().hex[:12]}")
    return f"s3://{bucket}/registry?addressing_style=path"


@pytest.fixture
def s3_backend(s3_url: str) -> S3Store:
    return S3Store.from_url(s3_url)


@pytest.fixture
def s3_registries(tmp_path: Path, s3_url: str) -> Iterator[Callable[..., RegistryProcess]]:
    """``start(*args)``: a started ``hangar registry serve --storage s3://…`` on the test's bucket
    and data directory (several share them, as replicas do), ``--auth off`` unless ``args`` name
    ``--auth``; the AWS variables as the test has set them when it starts one. Stopped at the end."""
    with registries(lambda _n: tmp_path / "data", "", "--storage", s3_url) as start:
        yield start


@pytest.fixture
def s3_registry(s3_registries: Callable[..., RegistryProcess]) -> RegistryProcess:
    """``hangar registry serve --storage s3://…`` (the AWS variables are set by s3_env)."""
    return s3_registries()


class RecordingProxy:
    """A plain HTTP proxy in front of Swift that records each request's method, target and
    Authorization, to see who sends what to the object store. Host headers pass unchanged, so
    the signatures made for the proxy's address verify at Swift."""

    def __init__(self, upstream: str) -> None:
        self.seen: list[tuple[str, str, str, str]] = []  # (method, path, Authorization, Range)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length")}
                proxy.seen.append(
                    (self.command, self.path, self.headers.get("Authorization", ""), self.headers.get("Range", ""))
                )
                r = httpx.request(self.command, upstream + self.path, headers=headers, content=body, timeout=60)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(r.content)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recording_proxy(
    swift: SwiftS3, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[RecordingProxy]:
    """A RecordingProxy in front of Swift, through which the registries this test starts reach the
    object store, under another host name (``localhost``) than the registry's (``127.0.0.1``)."""
    proxy = RecordingProxy(swift.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://localhost:{proxy.port}")
    yield proxy
    proxy.stop()


def hangar(home: Path, *args: str) -> str:
    """The ``hangar`` command with ``HANGAR_HOME`` at ``home``; its output (it must succeed)."""
    env = {**os.environ, "HANGAR_HOME": str(home)}
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout
