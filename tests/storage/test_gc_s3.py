"""Garbage collection on S3 (a real Swift, tests/swift.py) while pushes run: ``hangar registry gc``
again and again beside clients pushing models, some of them re-pushing blobs that gc is busy
deleting; nothing an upload or a manifest uses may go, and abandoned uploads are purged."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from formats import mediatypes as mt
from tests.helpers import digest_of, ollama_manifest
from tests.servers import REPO_ROOT, RegistryProcess
from tests.swift import SwiftS3

MiB = 1024 * 1024


def upload(http: httpx.Client, repo: str, data: bytes, pause: float = 0.0) -> dict[str, object]:
    """A chunked upload (two PATCHes, ``pause`` apart, so that gc runs meet it in flight)."""
    location = http.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    half = len(data) // 2
    for first, chunk in ((0, data[:half]), (half, data[half:])):
        r = http.patch(location, content=chunk, headers={"Content-Range": f"{first}-{first + len(chunk) - 1}"})
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        time.sleep(pause)
    r = http.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text
    return {"digest": digest_of(data), "size": len(data)}


def test_gc_during_pushes_deletes_nothing_in_use(tmp_path: Path, s3_url: str, swift: SwiftS3) -> None:
    registry = RegistryProcess(tmp_path / "data", "", "--auth", "off", "--storage", s3_url, "--workers", "2").start()
    bucket = urlsplit(s3_url).netloc
    recycled = os.urandom(MiB + 7)  # pushed, orphaned and pushed again all through the run
    pushed: list[tuple[str, list[dict[str, object]]]] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    http = httpx.Client(base_url=registry.url, timeout=60, follow_redirects=True)

    # An upload abandoned before the run: the purge aborts its multipart upload.
    abandoned = http.post("/v2/team/abandoned/blobs/uploads/").headers["location"]
    assert http.patch(abandoned, content=os.urandom(6 * MiB)).status_code == 202

    def pusher(n: int) -> None:
        try:
            i = 0
            while not stop.is_set():
                repo = f"team/p{n}-{i}"
                config = upload(http, repo, f'{{"model_format":"gguf","n":"{n}-{i}"}}'.encode())
                weights = upload(http, repo, os.urandom(6 * MiB + i), pause=0.4)
                again = upload(http, repo, recycled, pause=0.2)
                layers = [{"mediaType": mt.OLLAMA_MODEL, **weights}, {"mediaType": mt.OLLAMA_TEMPLATE, **again}]
                raw = ollama_manifest(config, layers)
                r = http.put(f"/v2/{repo}/manifests/v1", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
                assert r.status_code == 201, r.text
                pushed.append((repo, [config, *layers]))
                i += 1
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    def orphaner() -> None:
        """Keeps gc busy: blobs linked to a repository no manifest names, then unlinked."""
        try:
            i = 0
            while not stop.is_set():
                for data in (recycled, os.urandom(200_000 + i)):
                    blob = upload(http, "team/junk", data)
                    assert http.delete(f"/v2/team/junk/blobs/{blob['digest']}").status_code == 202
                i += 1
                time.sleep(0.3)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(2)] + [threading.Thread(target=orphaner)]
    for t in threads:
        t.start()
    deleted = 0
    runs = 0
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not failures:
            cmd = [sys.executable, "-m", "cli", "registry", "gc", "--data-dir", str(registry.data_dir)]
            cmd += ["--storage", s3_url, "--grace", "0s", "--upload-max-age", "8s"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout
            deleted += out.count("deleted blob ")
            runs += 1
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    try:
        assert not failures, failures
        assert runs >= 3 and deleted >= 3 and len(pushed) >= 4, (runs, deleted, len(pushed))
        # Every blob of every manifest pushed during the run is there, whole.
        for repo, blobs in pushed:
            for blob in blobs:
                r = http.get(f"/v2/{repo}/blobs/{blob['digest']}")
                assert r.status_code == 200, (repo, blob, r.status_code)
                assert "sha256:" + hashlib.sha256(r.content).hexdigest() == blob["digest"]
        # The abandoned upload went with its multipart upload; no other session is left over.
        assert http.get(abandoned).status_code == 404
        left = swift.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert left == [], left
    finally:
        http.close()
        registry.stop()
