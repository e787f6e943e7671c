"""``hangar registry fsck``: a registry damaged on purpose (bytes flipped, truncated and deleted,
rows orphaned and dropped, leftovers of crashes) is reported, repaired where that loses nothing,
and whole again once the damaged models are pushed again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from formats.digest import Digest
from tests.helpers import digest_of, push_model, random_bytes
from tests.people import database_url
from tests.servers import REPO_ROOT, RegistryProcess


def fsck(registry: RegistryProcess, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli", "registry", "fsck", "--data-dir", str(registry.data_dir)]
    if registry.database_url:
        cmd += ["--database-url", registry.database_url]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


def blob_file(registry: RegistryProcess, digest: str) -> Path:
    hex_ = Digest.parse(digest).hex
    return registry.data_dir / "blobs" / "sha256" / hex_[:2] / hex_


def raw_sql(registry: RegistryProcess, *statements: str) -> None:
    """Statements run below the registry's rules: foreign keys not enforced (SQLite's default on
    a plain connection; PostgreSQL's replica role), as a faulty disk or a careless admin would."""
    engine = sa.create_engine(database_url(registry), poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET session_replication_role = replica")
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def lines_of(kind: str, output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(kind + " ")]


def test_fsck_reports_and_repairs_a_damaged_registry(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry: RegistryProcess = make_registry()
    http = httpx.Client(base_url=registry.url, timeout=30)
    weights = {name: random_bytes(300_000 + i) for i, name in enumerate(("flip", "cut", "gone", "fine"))}
    layers = {name: push_model(http, f"team/{name}", model=data)[1] for name, data in weights.items()}

    healthy = fsck(registry, "--full")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "0 problem(s)" in healthy.stdout and "sample seed" in healthy.stdout

    # Damage: one byte flipped, a blob truncated, one deleted; the registry keeps running.
    flipped, cut, gone = (layers[n][1]["digest"] for n in ("flip", "cut", "gone"))
    path = blob_file(registry, flipped)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    with open(blob_file(registry, cut), "r+b") as f:
        f.truncate(1000)
    blob_file(registry, gone).unlink()
    # Rows: an orphan reference, a dropped reference of a healthy manifest, an upload whose data
    # is gone; bytes that no row names (a crash between publishing and recording them), old.
    fine_weights = layers["fine"][1]["digest"]
    raw_sql(
        registry,
        "INSERT INTO manifest_reference (manifest_id, digest) VALUES (999999, 'sha256:" + "0" * 64 + "')",
        f"DELETE FROM manifest_reference WHERE digest = '{fine_weights}'",
        "INSERT INTO upload (id, repository_id, started_at, updated_at) "
        "SELECT 'lost-upload', id, '2020-01-01 00:00:00', '2020-01-01 00:00:00' FROM repository LIMIT 1",
    )
    stray = random_bytes(5000)
    stray_path = blob_file(registry, digest_of(stray))
    stray_path.parent.mkdir(parents=True, exist_ok=True)
    stray_path.write_bytes(stray)
    os.utime(stray_path, (time.time() - 7200, time.time() - 7200))

    # No blob hashed whole: sizes for all, and one sampled chunk per blob (whose sum was kept)
    # finds the flipped byte.
    report = fsck(registry, "--sample", "0")
    assert report.returncode == 1, report.stdout + report.stderr
    out = report.stdout
    assert lines_of("digest-mismatch", out) == [
        f"digest-mismatch {flipped}: chunk 0 (bytes 0-{len(weights['flip']) - 1}) is not what was pushed"
    ]
    assert lines_of("size-mismatch", out) == [
        f"size-mismatch {cut}: the store holds 1000 bytes; the database says {len(weights['cut'])}"
    ]
    assert lines_of("missing-blob", out) == [
        f"missing-blob {gone}: no bytes in the store for a {len(weights['gone'])}-byte blob"
    ]
    broken = lines_of("broken-manifest", out)
    assert len(broken) == 3 and all("push it again" in line for line in broken)
    assert {line.split("@")[0].split()[1] for line in broken} == {"team/flip", "team/cut", "team/gone"}
    assert lines_of("orphan-row", out) == ["orphan-row manifest_reference: 1 row(s) point at rows that are gone"]
    assert len(lines_of("missing-reference", out)) == 1 and fine_weights in lines_of("missing-reference", out)[0]
    assert lines_of("stray-blob", out) == [f"stray-blob {digest_of(stray)}: 5000 bytes that no blob row names"]
    assert lines_of("stale-upload", out) == ["stale-upload lost-upload: an upload session whose data is gone"]
    assert "10 problem(s), 0 repaired, 10 left" in out

    # Meanwhile the registry serves what is good, and nothing damaged passes for good.
    fine_manifest = http.get("/v2/team/fine/manifests/latest")
    assert fine_manifest.status_code == 200
    assert http.get(f"/v2/team/fine/blobs/{layers['fine'][1]['digest']}").content == weights["fine"]

    repaired = fsck(registry, "--repair")
    assert repaired.returncode == 1  # the three manifests stay broken until pushed again
    assert "[repaired]" in lines_of("digest-mismatch", repaired.stdout)[0]
    assert "[repaired]" in lines_of("size-mismatch", repaired.stdout)[0]
    assert "[repaired]" in lines_of("missing-blob", repaired.stdout)[0]
    assert all("[repaired]" in line for name in ("orphan-row", "missing-reference", "stray-blob", "stale-upload")
               for line in lines_of(name, repaired.stdout))  # fmt: skip
    assert not any("[repaired]" in line for line in lines_of("broken-manifest", repaired.stdout))
    assert not blob_file(registry, flipped).exists() and not stray_path.exists()
    for name, digest in (("flip", flipped), ("cut", cut), ("gone", gone)):  # so a push uploads them again
        assert http.head(f"/v2/team/{name}/blobs/{digest}").status_code == 404

    # Pushing the models again restores them; then the registry is whole.
    for name in ("flip", "cut", "gone"):
        push_model(http, f"team/{name}", model=weights[name])
    again = fsck(registry, "--full")
    assert again.returncode == 0, again.stdout
    assert "0 problem(s)" in again.stdout
    for name, data in weights.items():
        assert http.get(f"/v2/team/{name}/blobs/{digest_of(data)}").content == data
    http.close()


def test_fsck_removes_a_manifest_whose_bytes_were_altered(make_registry) -> None:  # type: ignore[no-untyped-def]
    registry: RegistryProcess = make_registry()
    with httpx.Client(base_url=registry.url, timeout=30) as http:
        raw, _ = push_model(http, "team/altered")
        push_model(http, "team/kept")
        digest = digest_of(raw)
        raw_sql(registry, f"UPDATE manifest SET size = size + 1 WHERE digest = '{digest}'")
        report = fsck(registry)
        assert report.returncode == 1
        assert lines_of("corrupt-manifest", report.stdout) == [
            f"corrupt-manifest team/altered@{digest}: the stored bytes do not match the digest"
        ]
        assert fsck(registry, "--repair").returncode == 0
        assert http.get("/v2/team/altered/manifests/latest").status_code == 404
        assert http.get("/v2/team/kept/manifests/latest").status_code == 200
        assert fsck(registry).returncode == 0
