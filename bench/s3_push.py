"""Push throughput to S3 (a real Swift with s3api, tests/swift.py): Hangar's registry against the
reference registry's own S3 driver (CNCF distribution, Debian's docker-registry) on the same Swift.

``push_throughput`` is the measurement, for bench/storage.py to call; run alone, this script
prints its figures. Each push is a 1 GiB blob (by default) in 64 MiB chunks:

- ``hangar-through``: curl PATCHes the chunks to Hangar's registry (``--storage s3://…``), which
  sends them on to the store as multipart parts;
- ``hangar-redirect``: ``hangar push`` of a model with that blob: the registry offers
  ``X-Redirect-Uploads``, the client PUTs its parts straight to presigned URLs on the store and the
  registry reads the blob back once at the commit to verify its sha256;
- ``reference``: curl PATCHes the same chunks to docker-registry with its ``s3`` driver.

Registry CPU seconds (the server process tree, from /proc) are reported beside each.
Usage: python bench/s3_push.py [--size-mib N] [--runs N] [--registry-root DIR]
(``--registry-root``: run Hangar's registry from another checkout, e.g. the commit before a change).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, MiB, Server, free_port, process_tree_cpu
from bench.registry import make_blob, push_chunked, split
from tests.swift import ACCESS_KEY, REGION, SECRET_KEY, SwiftS3


def _hangar_s3_registry(work: Path, swift: SwiftS3, bucket: str, root: Path) -> tuple[Server, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "registry", "serve", "--listen", f"127.0.0.1:{port}", "--auth", "off",
           "--data-dir", str(work / "hangar-data"), "--log-level", "warning",
           "--storage", f"s3://{bucket}/registry?addressing_style=path"]  # fmt: skip
    env = {**os.environ, **swift.env(), "PYTHONPATH": str(root)}
    server = Server(cmd, f"http://127.0.0.1:{port}/v2/", work / "hangar.log", env)
    return server, f"http://127.0.0.1:{port}"


def _reference_s3_registry(work: Path, swift: SwiftS3, bucket: str) -> tuple[Server, str]:
    """docker-registry with its s3 driver on the same Swift (environment.md's configuration)."""
    port = free_port()
    config = work / "reference.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn, accesslog: {disabled: true}}\n"
        "storage:\n"
        f"  s3: {{accesskey: '{ACCESS_KEY}', secretkey: '{SECRET_KEY}', region: {REGION}, "
        f"regionendpoint: '{swift.endpoint}', bucket: {bucket}, secure: false, v4auth: true, "
        "rootdirectory: /reg}\n"
        "  redirect: {disable: true}\n  delete: {enabled: true}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: bench-secret\n"
    )
    # Its s3 driver panics when AWS_CA_BUNDLE is set (environment.md).
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    server = Server(["docker-registry", "serve", str(config)], f"http://127.0.0.1:{port}/v2/", work / "ref.log", env)
    return server, f"http://127.0.0.1:{port}"


def _hangar_push(home: Path, name: str, root: Path) -> None:
    env = {**os.environ, "HANGAR_HOME": str(home), "PYTHONPATH": str(root)}
    env.pop("HANGAR_MODELS", None)
    subprocess.run([sys.executable, "-m", "cli.main", "push", "--insecure", name], env=env, check=True,
                   stdout=subprocess.DEVNULL, cwd=root)  # fmt: skip


def push_throughput(
    work: Path, size_mib: int = 1024, runs: int = 1, registry_root: Path = ROOT, swift: SwiftS3 | None = None
) -> dict[str, dict[str, float]]:
    """``{figure: {"mib_s": …, "cpu_s": …}}``: the median push throughput of each way, and the
    registry's CPU seconds for one push (median). Starts (and stops) a Swift unless given one."""
    from bench.pull_push import create_model

    own_swift = swift is None
    swift = swift or SwiftS3()
    work.mkdir(parents=True, exist_ok=True)
    blob = work / "blob"
    digest = make_blob(blob, size_mib * MiB)
    chunks = split(blob, size_mib * MiB)
    results: dict[str, list[tuple[float, float]]] = {"hangar-through": [], "hangar-redirect": [], "reference": []}
    try:
        hangar_server, hangar_url = _hangar_s3_registry(work, swift, swift.create_bucket("bench-hangar"), registry_root)
        ref_server, ref_url = _reference_s3_registry(work, swift, swift.create_bucket("bench-reference"))
        with hangar_server, ref_server:
            assert hangar_server.proc is not None and ref_server.proc is not None
            for _ in range(runs):
                for figure, url, proc in (
                    ("hangar-through", hangar_url, hangar_server.proc),
                    ("reference", ref_url, ref_server.proc),
                    ("hangar-redirect", hangar_url, hangar_server.proc),
                ):
                    repo = f"bench/{figure}-{uuid.uuid4().hex[:8]}"
                    cpu = process_tree_cpu(proc.pid)
                    if figure == "hangar-redirect":
                        home = work / f"home-{uuid.uuid4().hex[:8]}"
                        name = f"{hangar_url.removeprefix('http://')}/{repo}:v1"
                        create_model(home, name, blob)
                        os.sync()
                        start = time.perf_counter()
                        _hangar_push(home, name, registry_root)
                        seconds = time.perf_counter() - start
                        shutil.rmtree(home)
                    else:
                        seconds = push_chunked(url, repo, chunks, digest)
                    results[figure].append((size_mib / seconds, process_tree_cpu(proc.pid) - cpu))
    finally:
        if own_swift:
            swift.stop()
    return {
        figure: {"mib_s": statistics.median(r[0] for r in runs_), "cpu_s": statistics.median(r[1] for r in runs_)}
        for figure, runs_ in results.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--registry-root", type=Path, default=ROOT)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hangar-s3-push-"))
    try:
        figures = push_throughput(work, args.size_mib, args.runs, args.registry_root.resolve())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for figure, values in figures.items():
        print(f"{figure:16} {values['mib_s']:7.1f} MiB/s   registry CPU {values['cpu_s']:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
