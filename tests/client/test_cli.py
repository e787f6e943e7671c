"""The hangar command line as a user runs it (no terminal: plain lines)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from client.config import load
from client.store import Store
from tests.client.conftest import make_model
from tests.servers import REPO_ROOT, wait_until


def hangar(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HANGAR_HOME": str(home)}
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, cwd=REPO_ROOT
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def imported_by(home: Path, *args: str) -> set[str]:
    """The modules a hangar command imports (from ``python -X importtime``)."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cli.main", *args],
        env={**os.environ, "HANGAR_HOME": str(home)}, capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}


def test_push_pull_list_show_cp_rm_prune(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    store = Store(load({"HANGAR_HOME": str(alice)}).models).ensure()
    name = make_model(store, f"{registry.host}/team/model:v1", os.urandom(2_000_000))

    out = hangar(alice, "push", str(name)).stdout.splitlines()
    assert out[0] == "retrieving manifest" and out[-2:] == ["pushing manifest", "success"]
    assert any(re.fullmatch(r"pushing [0-9a-f]{12}: 100% \(2\.0 MB/2\.0 MB\)", line) for line in out)

    out = hangar(bob, "pull", f"{registry.host}/team/model:v1").stdout.splitlines()
    assert out[0] == "pulling manifest" and out[-3:] == ["verifying sha256 digest", "writing manifest", "success"]

    listing = hangar(bob, "list").stdout.splitlines()
    assert re.split(r"\s{2,}", listing[0].strip()) == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = re.split(r"\s{2,}", listing[1].strip())
    assert row[0] == f"{registry.host}/team/model:v1" and row[1] == store.get(name).id[:12]
    assert row[2] == "2.0 MB" and row[3] in ("Just now", "Less than a minute ago")
    assert hangar(bob, "ls", "nothing-matches").stdout.splitlines()[1:] == []

    modelfile = hangar(bob, "show", f"{registry.host}/team/model:v1", "--modelfile").stdout
    assert "TEMPLATE {{ .Prompt }}" in modelfile and f"# FROM {registry.host}/team/model:v1" in modelfile
    assert hangar(bob, "show", f"{registry.host}/team/model:v1", "--template").stdout == "{{ .Prompt }}\n"

    assert hangar(bob, "cp", f"{registry.host}/team/model:v1", "mine").stdout.strip() == (
        f"copied '{registry.host}/team/model:v1' to 'mine'"
    )
    assert (
        hangar(bob, "rm", f"{registry.host}/team/model:v1").stdout.strip() == f"deleted '{registry.host}/team/model:v1'"
    )
    assert hangar(bob, "show", "mine").returncode == 0  # the copy keeps the blobs
    assert "deleted 'mine:latest'" in hangar(bob, "rm", "mine").stdout
    missing = hangar(bob, "rm", "mine", check=False)
    assert missing.returncode == 1 and "model 'mine:latest' not found" in missing.stderr
    assert "freed 0 B" in hangar(bob, "prune", "--grace", "0s").stdout
    assert list((bob / "models" / "blobs").iterdir()) == []


def test_export_import_commands(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = Store(load({"HANGAR_HOME": str(tmp_path / "a")}).models).ensure()
    make_model(store, "local/model")
    out = hangar(tmp_path / "a", "export", "local/model", str(tmp_path / "m.tar")).stdout
    assert out.startswith("exported 'local/model:latest' to ")
    assert hangar(tmp_path / "b", "import", str(tmp_path / "m.tar")).stdout.startswith(
        "imported 'local/model:latest' (3 new blob(s)"
    )


def test_ctrl_c_stops_a_pull_and_says_it_will_resume(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = Store(load({"HANGAR_HOME": str(tmp_path / "a")}).models).ensure()
    name = make_model(store, f"{registry.host}/slow/model", os.urandom(8_000_000))
    hangar(tmp_path / "a", "push", str(name))
    env = {**os.environ, "HANGAR_HOME": str(tmp_path / "b")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "pull", str(name), "--max-rate", "1MB"], env=env, cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A terminal's Ctrl-C, even when the tests run as a background job (whose shell ignores
        # SIGINT, and Python then leaves it ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    partial = tmp_path / "b" / "models" / "blobs"
    wait_until(lambda: partial.exists() and any(p.name.endswith("-partial") for p in partial.iterdir()), 30, "the pull")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "run the same command again to resume" in err and "Traceback" not in err
    resumed = hangar(tmp_path / "b", "pull", str(name))
    assert resumed.stdout.strip().endswith("success")


def test_store_commands_do_not_load_the_network_stack(tmp_path: Path) -> None:
    # `hangar list` and friends start in half the time when the HTTP clients, the event loop and
    # cryptography (needed to pull, push and sign) are left unimported.
    make_model(Store(load({"HANGAR_HOME": str(tmp_path)}).models).ensure(), "local/one", b"weights")
    imported = imported_by(tmp_path, "list")
    assert "client.store" in imported
    network = {"aiohttp", "httpx", "asyncio", "anyio", "cryptography", "client.account", "client.keys"}
    assert not network & imported


def test_push_does_not_load_the_pull_only_http_client(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # aiohttp carries pulled bytes only; a push (httpx) need not spend a sixth of a second on it.
    settings = load({"HANGAR_HOME": str(tmp_path)})
    name = make_model(Store(settings.models).ensure(), f"{registry.host}/cli/lean", b"weights")
    imported = imported_by(tmp_path, "push", str(name))
    assert "client.push" in imported and "httpx" in imported
    assert "aiohttp" not in imported
    # Nor httpx's own command-line tool (click, pygments): hangar never runs it.
    assert not {"click", "pygments"} & imported
