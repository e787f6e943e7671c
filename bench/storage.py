"""Object storage and replicas: S3-backed Hangar (a real Swift, tests/swift.py) against the
filesystem-backed one and against the reference registry's own S3 driver, in one run on this
machine; writes its section of docs/benchmarks.md.

- pull of a 1 GiB blob by ``hangar pull`` from the S3-backed registry (blob GETs answer ``307``
  to presigned URLs: the bytes come from Swift) and from the filesystem-backed one (the registry
  serves them), with the CPU seconds each registry (and Swift) spent per GiB served;
- manifest GET by tag, requests/s (wrk), from one replica directly, and through the round-robin
  proxy of the tests (tests/roundrobin.py) in front of one and of two replicas (PostgreSQL + S3);
- push of the 1 GiB blob to S3, measured by bench/s3_push.py's ``push_throughput`` on the same
  Swift: ``hangar push`` (parts straight to presigned URLs on the store) and curl's 16 × 64 MiB
  PATCHes through Hangar, against the same PATCHes to the reference registry (Debian's
  docker-registry 2.8) with its own ``s3`` driver.

Every command is a fresh process started after ``sync``; the pulls alternate which registry goes
first; medians reported. Usage: python bench/storage.py [--runs N] [--size-mib N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, GiB, MiB, Server, free_port, machine, process_tree_cpu, write_section
from bench.pull_push import create_model, hangar, pull_with_cpu
from bench.registry import make_blob, wrk_rps
from bench.s3_push import push_throughput
from tests.roundrobin import RoundRobinProxy
from tests.servers import PostgresCluster
from tests.swift import SwiftS3

PATH_STYLE = "?addressing_style=path"


def hangar_serve(name: str, work: Path, env: dict[str, str], *args: str) -> tuple[Server, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "registry", "serve", "--listen", f"127.0.0.1:{port}", "--auth", "off",
           "--data-dir", str(work / name), "--log-level", "warning", *args]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    return Server(cmd, f"{url}/v2/", work / f"{name}.log", env), url


IDLE_SECONDS = 10.0


def idle_cpu_rate(pid: int) -> float:
    """CPU seconds per second that ``pid`` (with its children) spends serving nothing: its event
    loop's timers and background tasks, which run through a pull as well."""
    before = process_tree_cpu(pid)
    time.sleep(IDLE_SECONDS)
    return (process_tree_cpu(pid) - before) / IDLE_SECONDS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    for tool in ("curl", "wrk", "docker-registry", "swift-proxy-server", "memcached"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/setup.sh")

    work = OUT / "storage"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    size = args.size_mib * MiB
    blob = OUT / "registry" / "blob.bin"
    blob.parent.mkdir(parents=True, exist_ok=True)
    print(f"preparing a {args.size_mib} MiB blob", flush=True)
    make_blob(blob, size)

    print("starting Swift and PostgreSQL", flush=True)
    swift = SwiftS3()
    postgres = PostgresCluster()
    results: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    try:
        env = {**os.environ, **swift.env()}
        database = postgres.create_database()
        storage = f"s3://{swift.create_bucket('bench-replicas')}/registry{PATH_STYLE}"
        fs_server, fs_url = hangar_serve("fs", work, env, "--workers", "2")
        # Two replicas, one worker each, on one database and bucket; the first also serves the S3 pulls.
        replica_servers = [
            hangar_serve(f"replica{i}", work, env, "--workers", "1", "--storage", storage, "--database-url", database)
            for i in range(2)
        ]
        with fs_server, replica_servers[0][0] as s3_server, replica_servers[1][0]:
            replicas = [url for _, url in replica_servers]
            swift_pids = [p.pid for p in swift.procs]
            alice = work / "alice"
            hosts = {"fs": fs_url.split("://")[1], "s3": replicas[0].split("://")[1]}
            for host in hosts.values():
                create_model(alice, f"{host}/bench/model", blob)
                hangar(alice, "push", f"{host}/bench/model")
            servers = {"fs": fs_server.pid, "s3": s3_server.pid}
            for run in range(args.runs):
                print(f"run {run + 1}/{args.runs}: pulls", flush=True)
                for kind in ("fs", "s3") if run % 2 == 0 else ("s3", "fs"):
                    pids = {"registry": servers[kind], **{f"swift {i}": p for i, p in enumerate(swift_pids)}}
                    idle = idle_cpu_rate(servers[kind])
                    seconds, cpu = pull_with_cpu(work / "bob", f"{hosts[kind]}/bench/model", pids)
                    record(f"pull {kind}", size / seconds / MiB)
                    record(f"registry cpu {kind}", cpu["registry"] / (size / GiB))
                    record(f"registry idle cpu {kind}", idle * seconds / (size / GiB))
                    record(f"swift cpu {kind}", sum(v for k, v in cpu.items() if k.startswith("swift")) / (size / GiB))

                print(f"run {run + 1}/{args.runs}: manifest GETs", flush=True)
                path = "/v2/bench/model/manifests/latest"  # what hangar push wrote
                record("manifest direct", wrk_rps(replicas[0] + path))
                for n in (1, 2):
                    proxy = RoundRobinProxy(u.split("://")[1] for u in replicas[:n]).start()
                    try:
                        record(f"manifest proxy {n}", wrk_rps(proxy.url + path))
                    finally:
                        proxy.stop()
        print("pushes to S3 (bench/s3_push.py)", flush=True)
        pushes = push_throughput(work / "push", args.size_mib, args.runs, swift=swift)
    finally:
        postgres.stop()
        swift.stop()

    med = {k: statistics.median(v) for k, v in results.items()}
    # CPU times come from /proc in clock ticks (10 ms): a median of a few ticks a run is coarse, so
    # the CPU figures are means over all runs (total CPU over total bytes).
    mean = {k: statistics.fmean(v) for k, v in results.items() if "cpu" in k}
    serving = mean["registry cpu s3"] - mean["registry idle cpu s3"]
    ref_push = pushes["reference"]["mib_s"]
    lines = [
        "## Object storage and replicas: S3 (Swift) vs filesystem, one replica vs two",
        "",
        f"`python bench/storage.py --runs {args.runs} --size-mib {args.size_mib}`, {time.strftime('%Y-%m-%d')}, "
        f"{machine()}. Swift 2.30 with s3api (one proxy, object, container and account server with memcached, "
        "tests/swift.py) on the same machine and disk. Filesystem: `hangar registry serve --workers 2 --auth off` "
        "(SQLite + a folder). S3: two replicas `hangar registry serve --workers 1 --auth off --storage s3://… "
        "--database-url postgresql://…` on one PostgreSQL and one bucket; pulls from the first directly; manifest "
        "GETs from it directly and through tests/roundrobin.py (Python asyncio in one thread, backend "
        "connections kept alive) in front of one and of both. Pushes: bench/s3_push.py (its own Hangar on S3, "
        "one worker; the "
        "reference is Debian's docker-registry 2.8 with its `s3` driver on the same Swift, started without "
        "AWS_CA_BUNDLE). CPU from /proc for each server's process tree (and Swift's four processes) over each "
        f"pull (CPU figures: means over the runs). `hangar pull` into an empty store, a fresh process after "
        f"`sync`; medians of {args.runs}.",
        "",
        "| figure | value | ratio | target |",
        "|---|---:|---:|---|",
        f"| `hangar pull` 1 GiB from the S3 registry (307 → Swift) | {med['pull s3']:,.0f} MiB/s | "
        f"S3 / filesystem = {med['pull s3'] / med['pull fs']:.2f}× | |",
        f"| `hangar pull` 1 GiB from the filesystem registry | {med['pull fs']:,.0f} MiB/s | | |",
        f"| registry CPU per GiB served, S3 with redirects: all it spent during the pull | "
        f"{mean['registry cpu s3']:.3f} s | | |",
        f"| … of which its idle rate over the pull's span (timers, background tasks; {IDLE_SECONDS:.0f} s "
        f"measured before each pull) | {mean['registry idle cpu s3']:.3f} s | | |",
        f"| … serving the pull (the requests: manifest, blob 307s, chunk sums) | {serving:.3f} s | | < 0.05 s |",
        f"| registry CPU per GiB served, filesystem | {mean['registry cpu fs']:.3f} s | | |",
        f"| Swift's CPU per GiB, pull from S3 (the store does the serving) | {mean['swift cpu s3']:.2f} s | | |",
        f"| manifest GET by tag, one replica directly (wrk -t2 -c32) | {med['manifest direct']:,.0f} req/s | | |",
        f"| manifest GET by tag, one replica behind the proxy | {med['manifest proxy 1']:,.0f} req/s | | |",
        f"| manifest GET by tag, two replicas behind the proxy | {med['manifest proxy 2']:,.0f} req/s | "
        f"2 / 1 = {med['manifest proxy 2'] / med['manifest proxy 1']:.2f}× | |",
        f"| push 1 GiB to S3, `hangar push` (parts straight to the store) | {pushes['hangar-redirect']['mib_s']:,.0f} "
        f"MiB/s | / reference = {pushes['hangar-redirect']['mib_s'] / ref_push:.2f}× | ≥ 1.0× |",
        f"| push 1 GiB to S3, curl 16 × 64 MiB PATCH → Hangar (through the registry) | "
        f"{pushes['hangar-through']['mib_s']:,.0f} MiB/s | / reference = "
        f"{pushes['hangar-through']['mib_s'] / ref_push:.2f}× | ≥ 1.0× |",
        f"| push 1 GiB to S3, curl 16 × 64 MiB PATCH → reference | {ref_push:,.0f} MiB/s | | |",
        "| registry CPU for one 1 GiB push: Hangar redirected / through / reference | "
        f"{pushes['hangar-redirect']['cpu_s']:.1f} s / {pushes['hangar-through']['cpu_s']:.1f} s / "
        f"{pushes['reference']['cpu_s']:.1f} s | | |",
        "",
        "All runs: " + "; ".join(
            f"{k}: {[round(v, 3 if 'cpu' in k else 0) for v in vals]}" for k, vals in results.items()
        ),
    ]  # fmt: skip
    body = "\n".join(lines)
    print(body)
    write_section("storage", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
