"""``hangar registry gc``: online removal of blobs nothing uses, with a dry run."""

import asyncio
import subprocess
import sys

import httpx

from registry import db
from registry.gc import execute, plan_blobs
from registry.meta import Metadata
from registry.storage import open_store
from tests.helpers import push_blob, push_model, random_bytes
from tests.people import database_url
from tests.servers import REPO_ROOT


def gc(registry, *args: str) -> str:  # type: ignore[no-untyped-def]
    cmd = [sys.executable, "-m", "cli", "registry", "gc", "--data-dir", str(registry.data_dir), *args]
    if registry.database_url:
        cmd += ["--database-url", registry.database_url]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout


def test_gc_removes_only_unused_blobs(make_registry, repo: str) -> None:  # type: ignore[no-untyped-def]
    registry = make_registry()
    with httpx.Client(base_url=registry.url) as client:
        _, used = push_model(client, repo)
        orphan = push_blob(client, repo, random_bytes(1000))
        assert client.delete(f"/v2/{repo}/blobs/{orphan['digest']}").status_code == 202
        orphan_file = registry.data_dir / "blobs" / "sha256" / orphan["digest"][7:9] / orphan["digest"][7:]
        assert orphan_file.exists()

        out = gc(registry, "--grace", "0s", "--dry-run")
        assert f"would delete blob {orphan['digest']}" in out and orphan_file.exists()
        out = gc(registry, "--grace", "1h")
        assert "deleted 0 blob(s)" in out and orphan_file.exists()
        out = gc(registry, "--grace", "0s")
        assert f"deleted blob {orphan['digest']}" in out and "deleted 1 blob(s)" in out
        assert not orphan_file.exists()
        for desc in used:  # everything a manifest uses is still served
            assert client.head(f"/v2/{repo}/blobs/{desc['digest']}").status_code == 200


def test_gc_keeps_a_blob_linked_again_between_plan_and_execute(make_registry, repo: str) -> None:  # type: ignore[no-untyped-def]
    """gc plans, then deletes one blob at a time; a push that links a planned blob again in
    between (online gc, workers running) must keep it: the delete re-checks in its statement."""
    registry = make_registry()
    meta = Metadata(db.make_engine(database_url(registry), pooled=False))
    store = open_store(registry.data_dir)
    data = random_bytes(5000)
    with httpx.Client(base_url=registry.url) as client:
        blob = push_blob(client, repo, data)
        assert client.delete(f"/v2/{repo}/blobs/{blob['digest']}").status_code == 202
        plan = asyncio.run(plan_blobs(meta, grace=0))
        assert blob["digest"] in plan.blobs
        other = repo.replace("/model", "/other")
        push_blob(client, other, data)  # linked again, after the plan
        done = asyncio.run(execute(meta, store, plan))
        assert blob["digest"] not in done.blobs
        r = client.get(f"/v2/{other}/blobs/{blob['digest']}")
        assert r.status_code == 200 and r.content == data
