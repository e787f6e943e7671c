"""Registry throughput, Hangar vs the reference registry (CNCF distribution, Debian's
docker-registry), side by side in one run on this machine; writes docs/benchmarks.md.

Both registries use filesystem storage on the same disk and are driven by the same clients
(curl, wrk, hey), alternating runs, medians reported. Figures:

- pull of a 1 GiB blob: one GET to a file, and 4 parallel ranged GETs to 4 files;
- push of a 1 GiB blob in 16 PATCH chunks of 64 MiB (POST, PATCH ×16, PUT ?digest=);
- manifest GET by tag, requests/s (wrk -t2 -c32 -d10s); blob HEAD requests/s (hey -c32 -z10s).

The blob is in the page cache (warm) for the pulls. Usage: python bench/registry.py [--runs N]
[--size-mib N] [--workers N] (Hangar worker processes, default 2 = the cores here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, GiB, MiB, hangar_registry, machine, process_tree_cpu, reference_registry, write_section

CHUNK = 64 * MiB
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--fail-with-body", *args], capture_output=True, text=True, check=True)


def header(headers: str, name: str) -> str:
    for line in headers.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    raise KeyError(name)


def absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


def push_chunked(base: str, repo: str, chunks: list[Path], digest: str) -> float:
    os.sync()  # no figure pays for the writeback of the one before
    start = time.perf_counter()
    r = curl("-X", "POST", "-D", "-", "-o", "/dev/null", f"{base}/v2/{repo}/blobs/uploads/")
    location = absolute(base, header(r.stdout, "Location"))
    offset = 0
    for chunk in chunks:
        size = chunk.stat().st_size
        r = curl("-X", "PATCH", "-T", str(chunk), "-D", "-", "-o", "/dev/null",
                 "-H", "Content-Type: application/octet-stream",
                 "-H", f"Content-Range: {offset}-{offset + size - 1}", location)  # fmt: skip
        location = absolute(base, header(r.stdout, "Location"))
        offset += size
    sep = "&" if "?" in location else "?"
    curl("-X", "PUT", "-o", "/dev/null", "-H", "Content-Length: 0", f"{location}{sep}digest={digest}")
    return time.perf_counter() - start


def upload_small(base: str, repo: str, data: bytes, digest: str) -> None:
    """POST then PUT with the body (distribution 2.8 has no single-request POST upload)."""
    r = curl("-X", "POST", "-D", "-", "-o", "/dev/null", f"{base}/v2/{repo}/blobs/uploads/")
    location = absolute(base, header(r.stdout, "Location"))
    sep = "&" if "?" in location else "?"
    curl("-X", "PUT", "-o", "/dev/null", "-H", "Content-Type: application/octet-stream",
         "--data-binary", data.decode(), f"{location}{sep}digest={digest}")  # fmt: skip


def pull_single(url: str, dest: Path) -> float:
    dest.unlink(missing_ok=True)
    os.sync()
    start = time.perf_counter()
    curl("-o", str(dest), url)
    return time.perf_counter() - start


def pull_discard(url: str, server_pid: int) -> tuple[float, float]:
    """The server's side of a pull alone: the bytes go to /dev/null. Returns the seconds taken and
    the CPU seconds the server spent (steadier than throughput on a shared machine)."""
    os.sync()
    cpu = process_tree_cpu(server_pid)
    start = time.perf_counter()
    curl("-o", "/dev/null", url)
    return time.perf_counter() - start, process_tree_cpu(server_pid) - cpu


def pull_ranges(url: str, dest: Path, size: int, n: int = 4) -> float:
    part = -(-size // n)
    paths = [dest.with_name(f"{dest.name}.{i}") for i in range(n)]
    for p in paths:
        p.unlink(missing_ok=True)
    os.sync()

    def one(i: int) -> None:
        last = min(size, (i + 1) * part) - 1
        curl("-r", f"{i * part}-{last}", "-o", str(paths[i]), url)

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - start
    assert sum(p.stat().st_size for p in paths) == size
    return elapsed


def wrk_rps(url: str) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", "-d10s", "-H", f"Accept: {MANIFEST_TYPE}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def hey_head_rps(url: str) -> float:
    out = subprocess.run(
        ["hey", "-z", "10s", "-c", "32", "-m", "HEAD", url], capture_output=True, text=True, check=True
    ).stdout
    assert "[200]" in out, out
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def make_blob(path: Path, size: int) -> str:
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as f:
            for _ in range(size // MiB):
                f.write(os.urandom(MiB))
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def split(path: Path, size: int) -> list[Path]:
    chunks = []
    with open(path, "rb") as f:
        for i in range(0, size, CHUNK):
            p = path.with_name(f"{path.name}.chunk{i // CHUNK:03d}")
            if not p.exists() or p.stat().st_size != min(CHUNK, size - i):
                p.write_bytes(f.read(CHUNK))
            else:
                f.seek(i + CHUNK)
            chunks.append(p)
    return chunks


def digits(key: str) -> int | None:
    return 2 if key == "server_cpu" else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for tool in ("curl", "wrk", "hey", "docker-registry"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/setup.sh")

    work = OUT / "registry"
    shutil.rmtree(work / "hangar", ignore_errors=True)
    shutil.rmtree(work / "reference", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MiB
    blob = work / "blob.bin"
    print(f"preparing a {args.size_mib} MiB blob", flush=True)
    digest = make_blob(blob, size)
    chunks = split(blob, size)
    config = b'{"model_format":"gguf"}'
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    config_type = "application/vnd.docker.container.image.v1+json"
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": size}],
    })  # fmt: skip

    # Without authentication, like the reference registry as configured here: this compares serving.
    hangar_server, hangar_url = hangar_registry(work / "hangar", args.workers, auth="off")
    ref_server, ref_url = reference_registry(work / "reference")
    results: dict[str, dict[str, list[float]]] = {"hangar": {}, "reference": {}}
    with hangar_server, ref_server:
        targets = {"hangar": hangar_url, "reference": ref_url}
        servers = {"hangar": hangar_server.pid, "reference": ref_server.pid}
        for run in range(args.runs):
            order = list(targets.items()) if run % 2 == 0 else list(reversed(targets.items()))
            for who, base in order:
                repo = f"bench/model{run}"
                r = results[who]
                print(f"run {run + 1}/{args.runs}: {who}", flush=True)
                r.setdefault("push", []).append(size / push_chunked(base, repo, chunks, digest) / MiB)
                blob_url = f"{base}/v2/{repo}/blobs/{digest}"
                r.setdefault("pull", []).append(size / pull_single(blob_url, work / f"{who}.out") / MiB)
                seconds, cpu = pull_discard(blob_url, servers[who])
                r.setdefault("pull_null", []).append(size / seconds / MiB)
                r.setdefault("server_cpu", []).append(cpu / (size / GiB))
                r.setdefault("pull4", []).append(size / pull_ranges(blob_url, work / f"{who}.out", size) / MiB)
                upload_small(base, repo, config, config_digest)
                curl("-X", "PUT", "-o", "/dev/null", "-H", f"Content-Type: {MANIFEST_TYPE}",
                     "--data-binary", manifest, f"{base}/v2/{repo}/manifests/latest")  # fmt: skip
                r.setdefault("manifest", []).append(wrk_rps(f"{base}/v2/{repo}/manifests/latest"))
                r.setdefault("head", []).append(hey_head_rps(blob_url))
        for who in results:
            for p in work.glob(f"{who}.out*"):
                p.unlink()

    import statistics

    rows = [
        ("pull, 1 GiB, one GET → file", "pull", "MiB/s"),
        ("pull, 1 GiB, one GET → /dev/null (the server's side alone)", "pull_null", "MiB/s"),
        ("pull, 1 GiB, 4 parallel Range GETs → 4 files", "pull4", "MiB/s"),
        ("push, 1 GiB, 16 × 64 MiB PATCH", "push", "MiB/s"),
        ("manifest GET by tag (wrk -t2 -c32)", "manifest", "req/s"),
        ("blob HEAD (hey -c32)", "head", "req/s"),
    ]
    lines = [
        "## Registry: Hangar vs the reference registry",
        "",
        f"`python bench/registry.py --runs {args.runs} --size-mib {args.size_mib} --workers {args.workers}`, "
        f"{time.strftime('%Y-%m-%d')}, {machine()}. Hangar: `hangar registry serve --workers {args.workers} "
        "--auth off` (SQLite + filesystem; no authentication, as the reference is configured); reference: "
        "Debian's docker-registry 2.8 (CNCF distribution), filesystem storage on the same disk. Same clients "
        "for both (curl, wrk, hey); runs alternate which registry goes first; medians of "
        f"{args.runs}; `sync` before each transfer. Blobs warm in the page cache for pulls; pulls write to files on "
        "the same disk.",
        "",
        "| figure | Hangar | reference | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    for label, key, unit in rows:
        ours = statistics.median(results["hangar"][key])
        ref = statistics.median(results["reference"][key])
        lines.append(f"| {label} | {ours:,.0f} {unit} | {ref:,.0f} {unit} | {ours / ref:.2f}× | ≥ 1.0× |")
    ours_cpu = statistics.median(results["hangar"]["server_cpu"])
    ref_cpu = statistics.median(results["reference"]["server_cpu"])
    lines.append(
        f"| server CPU per GiB sent (one GET → /dev/null; less is better) | {ours_cpu:.2f} s | {ref_cpu:.2f} s "
        f"| reference / Hangar = {ref_cpu / ours_cpu:.2f}× | |"
    )
    lines.append("")
    lines.append("All runs (Hangar / reference): " + "; ".join(
        f"{key}: {[round(v, digits(key)) for v in results['hangar'][key]]} / "
        f"{[round(v, digits(key)) for v in results['reference'][key]]}"
        for key in [k for _, k, _ in rows] + ["server_cpu"]))  # fmt: skip
    body = "\n".join(lines)
    print(body)
    write_section("registry", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
