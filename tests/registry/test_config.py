"""Settings: flags over HANGAR_REGISTRY_* variables over defaults."""

from pathlib import Path

import pytest

from registry import config


def test_defaults() -> None:
    s = config.from_env({})
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 5000, 1)
    assert s.resolved_data_dir == Path("~/.hangar/registry").expanduser().resolve()
    assert s.resolved_database_url == f"sqlite:///{s.resolved_data_dir / 'registry.db'}"


def test_environment_then_overrides() -> None:
    env = {
        "HANGAR_REGISTRY_LISTEN": "0.0.0.0:6000",
        "HANGAR_REGISTRY_WORKERS": "4",
        "HANGAR_REGISTRY_DATABASE_URL": "postgresql+psycopg://u@h/db",
        "HANGAR_REGISTRY_UPLOAD_MAX_AGE": "90m",
        "HANGAR_REGISTRY_PUBLIC_URL": "https://models.example.com/",
    }
    s = config.from_env(env)
    assert (s.port, s.workers, s.upload_max_age) == (6000, 4, 5400.0)
    assert s.resolved_database_url == "postgresql+psycopg://u@h/db"
    assert s.public_url == "https://models.example.com"
    s = config.from_env(env, listen="127.0.0.1:7000", workers=None)
    assert (s.port, s.workers) == (7000, 4)


def test_round_trip_through_worker_environment() -> None:
    s = config.from_env({}, data_dir="/tmp/x", workers=3, upload_max_age="2h")
    assert config.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HANGAR_REGISTRY_LISTEN": "nohost"}, "HOST:PORT"),
        ({"HANGAR_REGISTRY_LISTEN": "h:99999"}, "out of range"),
        ({"HANGAR_REGISTRY_LISTEN": "h:port"}, "must be a number"),
        ({"HANGAR_REGISTRY_WORKERS": "0"}, "at least 1"),
        ({"HANGAR_REGISTRY_WORKERS": "many"}, "HANGAR_REGISTRY_WORKERS"),
        ({"HANGAR_REGISTRY_PUBLIC_URL": "ftp://x"}, "http"),
        ({"HANGAR_REGISTRY_UPLOAD_MAX_AGE": "soon"}, "UPLOAD_MAX_AGE"),
    ],
)
def test_invalid_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.from_env(env)
