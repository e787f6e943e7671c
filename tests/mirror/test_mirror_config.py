"""The mirror's settings: ``--upstream`` specs, the credentials file, the size limit, routing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from registry import config
from registry.mirror.config import (
    Credentials,
    MirrorConfigError,
    Upstream,
    load_credentials,
    parse_cache_size,
    parse_upstreams,
    route,
)


def test_upstreams_route_by_namespace_with_a_catch_all() -> None:
    ups = parse_upstreams("library=https://registry.ollama.ai, acme=https://Models.Acme.com:443,http://cache.lan:5000")
    assert ups == [
        Upstream("https://registry.ollama.ai", "library"),
        Upstream("https://models.acme.com", "acme"),
        Upstream("http://cache.lan:5000", None),
    ]
    assert route(ups, "library/gemma3").url == "https://registry.ollama.ai"  # type: ignore[union-attr]
    assert route(ups, "gemma3").url == "https://registry.ollama.ai"  # type: ignore[union-attr]  # library's
    assert route(ups, "ACME/thing").url == "https://models.acme.com"  # type: ignore[union-attr]
    assert route(ups, "bob/model").url == "http://cache.lan:5000"  # type: ignore[union-attr]
    assert route(parse_upstreams("acme=https://a.example"), "bob/model") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ftp://x", "not an http(s) URL"),
        ("https://x/v2/library", "has a path"),
        ("Bad Space=https://x", "invalid namespace"),
        ("https://a,https://b", "two upstreams for every namespace"),
        ("x=https://a,x=https://b", "two upstreams for namespace 'x'"),
    ],
)
def test_bad_upstreams_are_refused_with_a_reason(spec: str, message: str) -> None:
    with pytest.raises(MirrorConfigError, match=re.escape(message)):
        parse_upstreams(spec)


def test_settings_take_upstreams_from_the_environment_and_check_them() -> None:
    env = {"HANGAR_REGISTRY_UPSTREAM": "library=https://registry.ollama.ai", "HANGAR_REGISTRY_CACHE_MAX_SIZE": "500GB"}
    settings = config.from_env(env)
    assert settings.mirror_upstreams() == [Upstream("https://registry.ollama.ai", "library")]
    assert parse_cache_size(settings.cache_max_size) == 500 * 10**9
    assert config.from_env(env, upstream_check_interval="1s").upstream_check_interval == 1.0
    with pytest.raises(ValueError, match="--cache-max-size"):
        config.from_env({"HANGAR_REGISTRY_CACHE_MAX_SIZE": "lots"})
    with pytest.raises(ValueError, match="without --upstream"):
        config.from_env({"HANGAR_REGISTRY_UPSTREAM_CREDENTIALS": "/nonexistent"})


def test_credentials_file(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("not read here")
    path = tmp_path / "upstreams.toml"
    path.write_text(
        '[upstream."https://registry.ollama.ai"]\n'
        f'key = "{key}"\n'
        '[upstream."https://ghcr.io"]\n'
        'username = "bot"\npassword = "s3cret"\n'
    )
    ups = parse_upstreams("library=https://registry.ollama.ai,https://ghcr.io,acme=https://acme.example")
    with_creds = load_credentials(path, ups)
    assert with_creds[0].credentials.key_path == str(key)
    assert with_creds[1].credentials == Credentials(username="bot", password="s3cret")
    assert with_creds[2].credentials.kind == "anonymous"
    # Secrets stay out of reprs (and so out of logs and tracebacks).
    assert "s3cret" not in repr(with_creds) and "bot" not in repr(with_creds[1].credentials)

    path.write_text('[upstream."https://other.example"]\ntoken = "t"\n')
    with pytest.raises(MirrorConfigError, match=r"no --upstream is https://other\.example"):
        load_credentials(path, ups)
    path.write_text('[upstream."https://ghcr.io"]\nusername = "bot"\n')
    with pytest.raises(MirrorConfigError, match="exactly one of"):
        load_credentials(path, ups)
    path.write_text('[upstream."https://ghcr.io"]\nkey = "/no/such/key"\n')
    with pytest.raises(MirrorConfigError, match="does not exist"):
        load_credentials(path, ups)
    path.write_text("[upstream\n")
    with pytest.raises(MirrorConfigError, match=r"upstreams\.toml"):
        load_credentials(path, ups)
