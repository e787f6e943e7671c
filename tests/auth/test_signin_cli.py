"""Signing up and in with the ``hangar`` command line, approving a second device, invites."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.people import accounts_of, audit_rows, unique
from tests.servers import REPO_ROOT, RegistryProcess


def hangar(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HANGAR_HOME": str(home)}
    env.pop("HANGAR_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"hangar {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def hangar_waiting(home: Path, *args: str, until: str) -> str:
    """Run a ``hangar`` command that waits (for a key approval) until its output matches ``until``,
    then stop it; returns the output so far."""
    env = {**os.environ, "HANGAR_HOME": str(home)}
    env.pop("HANGAR_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if re.search(until, line):
                break
    finally:
        proc.kill()
        proc.wait(10)
    out = "".join(seen)
    assert re.search(until, out), out
    return out


def test_signup_signin_whoami_and_second_device(auth_registry: RegistryProcess, tmp_path: Path) -> None:
    name = unique("carol")
    laptop, desktop = tmp_path / "laptop", tmp_path / "desktop"
    out = hangar(laptop, "signin", auth_registry.host, "--username", name, "--key-name", "laptop").stdout
    assert "Generated a new key" in out and f"Created the account '{name}'" in out
    key = laptop / "id_ed25519"
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert (laptop / "id_ed25519.pub").read_text().startswith("ssh-ed25519 AAAA")

    # Signing in again with a bound key just confirms it.
    assert f"Signed in to {auth_registry.url} as '{name}'" in hangar(laptop, "signin", auth_registry.host).stdout
    assert hangar(laptop, "whoami", auth_registry.host).stdout.startswith(f"{name} on {auth_registry.url}")

    # A second device asks for approval and waits; the first device approves its code.
    env = {**os.environ, "HANGAR_HOME": str(desktop)}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "signin", auth_registry.host, "--username", name, "--key-name", "desktop"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert waiting.stdout is not None
    code = None
    seen = []
    for line in waiting.stdout:
        seen.append(line)
        m = re.search(r"hangar keys approve (\w{4}-\w{4})", line)
        if m:
            code = m.group(1)
            break
    assert code, "".join(seen)
    # An unapproved key may not act for the account.
    unapproved = hangar(desktop, "whoami", auth_registry.host, check=False)
    assert unapproved.returncode != 0 and "this key is not bound to an account" in unapproved.stderr, unapproved
    assert "approved key SHA256:" in hangar(laptop, "keys", "approve", code, auth_registry.host).stdout
    rest, _ = waiting.communicate(timeout=30)
    assert waiting.returncode == 0 and f"as '{name}'" in rest
    assert hangar(desktop, "whoami", auth_registry.host).stdout.startswith(name)

    listing = hangar(laptop, "keys", "list", auth_registry.host).stdout
    assert "laptop" in listing and "desktop" in listing and listing.count("SHA256:") == 2

    # Sign out on the desktop removes only its key.
    assert "Signed out" in hangar(desktop, "signout", auth_registry.host).stdout
    signed_out = hangar(desktop, "whoami", auth_registry.host, check=False)
    assert signed_out.returncode != 0 and "this key is not bound to an account" in signed_out.stderr, signed_out
    assert hangar(laptop, "keys", "list", auth_registry.host).stdout.count("SHA256:") == 1

    actions = {(r.action, r.outcome) for r in audit_rows(auth_registry, actor=name)}
    assert {
        ("signup", "ok"),
        ("signin", "ok"),
        ("key.request", "ok"),
        ("key.add", "ok"),
        ("key.remove", "ok"),
    } <= actions


def test_key_from_another_tool(auth_registry: RegistryProcess, tmp_path: Path) -> None:
    """--key / HANGAR_KEY use an existing key, such as Ollama's."""
    from client.keys import load_or_create

    ollama_key = tmp_path / ".ollama" / "id_ed25519"
    identity, _ = load_or_create(ollama_key)
    name = unique("dave")
    hangar(tmp_path / "home", "signin", auth_registry.host, "--username", name, "--key", str(ollama_key))
    assert not (tmp_path / "home" / "id_ed25519").exists()
    out = hangar(tmp_path / "home", "whoami", auth_registry.host, "--key", str(ollama_key)).stdout
    assert identity.fingerprint in out


@pytest.fixture(params=["sqlite", "postgres"])
def invite_registry(request: pytest.FixtureRequest, tmp_path: Path, database_factory):  # type: ignore[no-untyped-def]
    proc = RegistryProcess(
        tmp_path / "data", database_factory(request.param), "--auth", "required", "--signup", "invite"
    )
    proc.start()
    yield proc
    proc.stop()


def test_invite_only_signup(invite_registry: RegistryProcess, tmp_path: Path) -> None:
    name = unique("erin")
    # Without a code: the registry does not say whether the name exists (it might be a second
    # device), so the client shows both ways on: approval, or sign-up with an invite.
    waiting = hangar_waiting(tmp_path / "erin", "signin", invite_registry.host, "--username", name, until="Waiting")
    assert "hangar keys approve" in waiting and "needs an invite" in waiting
    assert accounts_of(invite_registry).get(name) is None

    admin = subprocess.run(
        [sys.executable, "-m", "cli", "registry", "admin", "invite", "--data-dir", str(invite_registry.data_dir),
         *(["--database-url", invite_registry.database_url] if invite_registry.database_url else [])],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    )  # fmt: skip
    code = admin.stdout.strip()
    out = hangar(tmp_path / "erin", "signin", invite_registry.host, "--username", name, "--invite", code).stdout
    assert f"Created the account '{name}'" in out
    reused = hangar(
        tmp_path / "frank", "signin", invite_registry.host, "--username", unique("frank"), "--invite", code, check=False
    )
    assert reused.returncode != 0 and "unknown, used or expired" in reused.stderr
    assert {r.outcome for r in audit_rows(invite_registry, action="signup")} == {"ok", "denied"}


def test_invite_codes_are_safe_as_command_line_arguments(tmp_path: Path, database_factory) -> None:  # type: ignore[no-untyped-def]
    # A code beginning with "-" was once read by argparse as an option (about 1 in 64 codes).
    proc = RegistryProcess(tmp_path / "data", database_factory("sqlite"), "--auth", "required", "--signup", "invite")
    proc.start()
    try:
        accounts = accounts_of(proc)
        codes = [accounts.create_invite() for _ in range(300)]
    finally:
        proc.stop()
    assert all(re.fullmatch(r"[0-9a-f]{24}", code) for code in codes), codes
    assert len(set(codes)) == len(codes)


def test_closed_signup_and_admin_created_users(tmp_path: Path, database_factory) -> None:  # type: ignore[no-untyped-def]
    proc = RegistryProcess(tmp_path / "data", database_factory("sqlite"), "--auth", "required", "--signup", "closed")
    proc.start()
    try:
        waiting = hangar_waiting(tmp_path / "gina", "signin", proc.host, "--username", "gina", until="Waiting")
        assert "Sign-up is closed" in waiting
        # An administrator creates the account with the user's public key.
        from client.keys import load_or_create

        identity, _ = load_or_create(tmp_path / "gina" / "id_ed25519")
        subprocess.run(
            [sys.executable, "-m", "cli", "registry", "admin", "user", "create", "gina", "--pubkey-file",
             str(tmp_path / "gina" / "id_ed25519.pub"), "--data-dir", str(proc.data_dir)],
            check=True, capture_output=True, cwd=REPO_ROOT,
        )  # fmt: skip
        assert hangar(tmp_path / "gina", "whoami", proc.host).stdout.startswith("gina on")
        assert accounts_of(proc).get("gina") is not None
        assert identity.fingerprint in hangar(tmp_path / "gina", "keys", "list", proc.host).stdout
    finally:
        proc.stop()


def test_keys_show_prints_the_public_key(tmp_path: Path) -> None:
    out = hangar(tmp_path, "keys", "show").stdout.splitlines()
    assert out[0] == (tmp_path / "id_ed25519.pub").read_text().strip()
    assert out[1].startswith("# SHA256:") and "(new)" in out[1]
    assert "(new)" not in hangar(tmp_path, "keys", "show").stdout
