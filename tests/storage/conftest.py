"""Fixtures for the storage tests: a real Swift (S3 API) for the whole session, a bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from registry.storage.s3 import S3Store
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
