"""The failures users hit, each with a clear error: not signed in, no permission, registry
unreachable, TLS problems, invalid names."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import errors
from client.config import load
from client.pull import pull
from client.push import push
from client.store import Store
from formats.names import ModelName
from tests.client.conftest import make_model
from tests.servers import REPO_ROOT, RegistryProcess, free_port


def test_push_without_signing_in(auth_registry: RegistryProcess, tmp_path: Path) -> None:
    settings = load({"HANGAR_HOME": str(tmp_path / "nobody")})
    store = Store(settings.models).ensure()
    name = make_model(store, f"{auth_registry.host}/someone/model")
    assert not settings.key_path.exists()
    with pytest.raises(errors.Unauthorized, match="hangar signin") as raised:
        asyncio.run(push(name, store, settings))
    assert "'hangar login HOST'" in str(raised.value)  # for registries with passwords or robot tokens


def test_push_without_permission(people) -> None:  # type: ignore[no-untyped-def]
    alice, bob = people("alice"), people("bob")
    with pytest.raises(errors.Denied, match="no permission for this namespace"):
        bob.push(bob.model(f"{alice.name}/not-yours"))


def test_unreachable_registry(tmp_path: Path) -> None:
    settings = load({"HANGAR_HOME": str(tmp_path)})
    name = ModelName.parse(f"127.0.0.1:{free_port()}/ns/model")
    with pytest.raises(errors.RegistryUnreachable, match=r"cannot reach http://127\.0\.0\.1"):
        asyncio.run(pull(name, Store(settings.models), settings))


def test_https_to_a_plain_http_registry(registry: RegistryProcess, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[registries."{registry.host}"]\ninsecure = false\n')
    settings = load({"HANGAR_HOME": str(home)})
    with pytest.raises(errors.TLSError, match="--insecure"):
        asyncio.run(pull(ModelName.parse(f"{registry.host}/ns/model"), Store(settings.models), settings))


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hangar test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_self_signed_tls_needs_the_ca_bundle(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    proc = RegistryProcess(
        tmp_path / "data", "", "--auth", "off", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)
    )
    proc.start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        (home / "config.toml").write_text(f'[registries."{proc.host}"]\ninsecure = false\n')
        settings = load({"HANGAR_HOME": str(home)})
        store = Store(settings.models).ensure()
        name = make_model(store, f"{proc.host}/ns/model")
        with pytest.raises(errors.TLSError, match="ca_bundle"):
            asyncio.run(push(name, store, settings))
        (home / "config.toml").write_text(f'[registries."{proc.host}"]\ninsecure = false\nca_bundle = "{cert}"\n')
        settings = load({"HANGAR_HOME": str(home)})
        asyncio.run(push(name, store, settings))
        other = load({"HANGAR_HOME": str(home), "HANGAR_MODELS": str(tmp_path / "other")})
        result = asyncio.run(pull(name, Store(other.models), other))
        assert result.model.manifest.raw == store.get(name).manifest.raw
    finally:
        proc.stop()


@pytest.mark.parametrize("bad", ["a/b/c/d", "ns/", "bad host/ns/m", "ns/m:tag:extra", "ns/mo$del"])
def test_invalid_names(bad: str, tmp_path: Path) -> None:
    env = {**os.environ, "HANGAR_HOME": str(tmp_path)}
    for verb in ("pull", "push"):
        r = subprocess.run(
            [sys.executable, "-m", "cli.main", verb, bad], env=env, capture_output=True, text=True, cwd=REPO_ROOT
        )
        assert r.returncode == 1 and "invalid model name" in r.stderr, (verb, bad, r.stderr)
        assert "Traceback" not in r.stderr
