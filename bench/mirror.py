"""Pull of a 1 GiB model through the pull-through mirror, against a direct pull from its upstream;
writes its section of docs/benchmarks.md.

- direct: ``hangar pull UPSTREAM/bench/model`` into an empty store;
- cold: ``hangar pull MIRROR/bench/model`` with an empty mirror: upstream → mirror → client at
  once (the mirror streams each blob to the client while it downloads and verifies it);
- warm: the same pull again into another empty store, the mirror having it cached.

The upstream is a Hangar registry (auth off) on loopback, the mirror another one with
``--upstream``; every pull is a fresh ``hangar`` process started after ``sync``; each run starts a
fresh mirror; medians reported. Goals (issue #13): cold ≥ 0.8× direct, warm ≥ 1.0× direct.
Usage: python bench/mirror.py [--runs N] [--size-mib N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, MiB, Server, free_port, hangar_registry, machine, write_section
from bench.pull_push import create_model, hangar
from bench.registry import make_blob


def mirror_registry(data: Path, upstream: str) -> tuple[Server, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "registry", "serve", "--listen", f"127.0.0.1:{port}", "--auth", "off",
           "--data-dir", str(data), "--log-level", "warning", "--upstream", upstream]  # fmt: skip
    return Server(cmd, f"http://127.0.0.1:{port}/v2/", data.parent / f"{data.name}.log"), f"http://127.0.0.1:{port}"


def wait_cached(url: str, digest: str, timeout: float = 600) -> None:
    """Until the mirror stored the model and the big blob's chunk sums (read back after it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = httpx.get(f"{url}/v2/bench/model/manifests/latest").headers.get("x-hangar-mirror") == "hit"
        if stored and httpx.get(f"{url}/v2/bench/model/chunksums/{digest}", timeout=120).status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError("the mirror did not store the model")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    size = args.size_mib * MiB
    work = OUT / "mirror"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    blob = OUT / f"blob-{args.size_mib}m.bin"
    digest = make_blob(blob, size)

    results: dict[str, list[float]] = {"direct": [], "cold": [], "warm": []}
    upstream_server, upstream = hangar_registry(work / "upstream", auth="off")
    with upstream_server:
        alice = work / "alice"
        host = upstream.removeprefix("http://")
        create_model(alice, f"{host}/bench/model", blob)
        hangar(alice, "push", f"{host}/bench/model")
        for run in range(args.runs):
            mirror_server, mirror = mirror_registry(work / f"mirror{run}", upstream)
            with mirror_server:
                homes = [work / f"run{run}-{kind}" for kind in ("direct", "cold", "warm")]
                results["direct"].append(size / hangar(homes[0], "pull", f"{host}/bench/model") / MiB)
                mirror_host = mirror.removeprefix("http://")
                results["cold"].append(size / hangar(homes[1], "pull", f"{mirror_host}/bench/model") / MiB)
                wait_cached(mirror, digest)
                results["warm"].append(size / hangar(homes[2], "pull", f"{mirror_host}/bench/model") / MiB)
                for home in homes:
                    shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(work / f"mirror{run}", ignore_errors=True)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MiB/s" for k, v in results.items()), flush=True)

    median = {k: statistics.median(v) for k, v in results.items()}
    lines = [
        "## Pull through the mirror (issue #13)",
        "",
        f"`python bench/mirror.py --runs {args.runs} --size-mib {args.size_mib}` on {machine()}, loopback, one",
        "Hangar registry as the upstream and another as the mirror (`--upstream`), fresh stores, medians:",
        "",
        "| pull | MiB/s | × direct | goal |",
        "|---|---:|---:|---|",
        f"| direct from the upstream | {median['direct']:.0f} | 1.00 | |",
        f"| through the mirror, cold (upstream → mirror → client at once) | {median['cold']:.0f} | "
        f"{median['cold'] / median['direct']:.2f} | ≥ 0.8 |",
        f"| through the mirror, warm (cached) | {median['warm']:.0f} | "
        f"{median['warm'] / median['direct']:.2f} | ≥ 1.0 |",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("mirror", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
