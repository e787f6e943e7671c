"""Direct URLs for external downloaders (#20): ``hangar urls`` prints, for a model on an
auth-required registry, URLs that fetch each blob without credentials (checked with plain httpx
and curl), and ``hangar import-blobs`` adopts what was fetched, verified, completing the model
with the registry's ID and no registry contact; a broken download is rejected, never stored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from client.config import load
from client.store import Store
from formats.digest import Digest
from tests.servers import REPO_ROOT, RegistryProcess


def _hangar(home: Path, *args: str, models: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HANGAR_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HANGAR_MODELS", None)
    if models is not None:
        env["HANGAR_MODELS"] = str(models)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True)


def test_urls_fetch_without_credentials_and_import_blobs_completes_the_model(
    people, auth_registry: RegistryProcess, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    alice.account.set_default_visibility(alice.name, "private")
    name = alice.model(f"{alice.name}/direct", size=2_000_000)
    alice.push(name)
    manifest = alice.store.get(name).manifest
    digests = {str(d.digest) for d in [*manifest.layers, manifest.config] if d is not None}

    listed = _hangar(alice.settings.home, "urls", str(name), "--json")
    assert listed.returncode == 0, listed.stderr
    described = json.loads(listed.stdout)
    assert {b["digest"] for b in described["blobs"]} == digests
    assert described["name"] == str(name)

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for blob in described["blobs"]:
        assert blob["credentials_needed"] is False and blob["expires"] > 0
        # The blob URL itself wants credentials; the printed one does not.
        plain = f"{auth_registry.url}/v2/{alice.name}/direct/blobs/{blob['digest']}"
        assert httpx.get(plain).status_code == 401
        got = httpx.get(blob["url"], follow_redirects=False)
        assert got.status_code == 200 and str(Digest.of_bytes(got.content)) == blob["digest"]
        assert len(got.content) == blob["size"]
    if shutil.which("curl"):  # the way a person would: curl -o, straight from the text output
        first = described["blobs"][0]
        out = downloads / first["file"]
        subprocess.run(["curl", "-sSf", "-o", str(out), first["url"]], check=True)
    for blob in described["blobs"]:
        target = downloads / blob["file"]
        if not target.exists():
            target.write_bytes(httpx.get(blob["url"]).content)
    urls_file = tmp_path / "urls.json"
    urls_file.write_text(listed.stdout)

    # The text form names each blob and how long its URL lasts; --aria2 is aria2c's input file.
    text = _hangar(alice.settings.home, "urls", str(name))
    assert text.returncode == 0 and "no credentials needed; expires in" in text.stdout
    aria2 = _hangar(alice.settings.home, "urls", str(name), "--aria2").stdout.splitlines()
    assert sum(line.startswith("  checksum=sha-256=") for line in aria2) == len(digests)

    # Sneakernet: another machine (no key, no registry contact: the registry is stopped).
    auth_registry.stop()
    try:
        other_home, other_models = tmp_path / "other", tmp_path / "other-models"
        adopted = _hangar(other_home, "import-blobs", str(downloads), "--from", str(urls_file), models=other_models)
        assert adopted.returncode == 0, adopted.stderr
        assert f"{name.display()} is complete" in adopted.stdout
        store = Store(load({"HANGAR_HOME": str(other_home), "HANGAR_MODELS": str(other_models)}).models)
        assert store.get(name).manifest.raw == manifest.raw  # the same model ID as the registry's
        assert all(store.has_blob(Digest.parse(d)) for d in digests)
    finally:
        auth_registry.start()


def test_import_blobs_rejects_a_broken_download_and_reports_what_is_missing(tmp_path: Path) -> None:
    store = Store(load({"HANGAR_HOME": str(tmp_path / "home")}).models).ensure()
    good, bad = os.urandom(50_000), os.urandom(50_000)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / Digest.of_bytes(good).filename).write_bytes(good)
    wrong = Digest.of_bytes(b"what the file should have been")
    (downloads / wrong.filename).write_bytes(bad)  # truncated/corrupt: its name promises other bytes
    (downloads / "notes.txt").write_text("not a blob")

    result = _hangar(tmp_path / "home", "import-blobs", str(downloads))
    assert result.returncode == 1
    assert f"rejected {wrong.filename}: its sha256 is {Digest.of_bytes(bad)}" in result.stderr
    assert str(Digest.of_bytes(good)) in result.stdout
    assert store.has_blob(Digest.of_bytes(good))
    assert not store.has_blob(Digest.of_bytes(bad)) and not store.has_blob(wrong)
    assert sorted(p.name for p in downloads.iterdir()) == sorted(  # the folder is left as it was
        [Digest.of_bytes(good).filename, wrong.filename, "notes.txt"]
    )
