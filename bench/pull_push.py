"""Pull and push of a 1 GiB model: ``hangar`` against our registry, side by side in one run with
curl and skopeo against the reference registry (CNCF distribution); writes docs/benchmarks.md.

- push: ``hangar push`` (token auth, 64 MiB PATCH chunks) vs curl PATCHing the same 16 chunks to
  the reference registry;
- pull: ``hangar pull`` into an empty store (parallel ranged parts, verified, then renamed into
  place; flushed to disk later, the default, or before the rename with ``fsync = true``) vs
  ``curl -o`` of the blob from the reference registry (the plain-HTTP limit on this machine),
  ``curl -o`` then ``sha256sum`` (a verified file the shell's way), ``curl -o`` then ``openssl dgst
  -sha256`` (the fastest verified file this machine's native tools make: OpenSSL's SHA-NI code,
  the same that Python's hashlib runs), and ``skopeo copy`` of the same
  layer (as an OCI artifact; skopeo cannot copy Docker v2 manifests with Ollama layer types) from
  the reference registry.

Every command is a fresh process, as a user runs it, started after ``sync`` so that none pays for
the writeback of the one before; all pushes first, then all pulls, the pull figures in a
different order each run; medians reported.
Usage: python bench/pull_push.py [--runs N] [--size-mib N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, MiB, Server, free_port, machine, process_tree_cpu, reference_registry, write_section
from bench.registry import curl, make_blob, pull_single, push_chunked, split, upload_small

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def hangar(home: Path, *args: str) -> float:
    env = {**os.environ, "HANGAR_HOME": str(home)}
    env.pop("HANGAR_MODELS", None)
    os.sync()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pull_with_cpu(home: Path, name: str, servers: dict[str, int]) -> tuple[float, dict[str, float]]:
    """``hangar pull NAME`` into the empty store ``home`` (removed after): seconds, and the CPU
    seconds each of ``servers`` (a process with its children, by name) and the ``"client"`` (the
    ``hangar`` process) spent meanwhile."""
    shutil.rmtree(home, ignore_errors=True)
    before = {k: process_tree_cpu(pid) for k, pid in servers.items()}
    client = _children_cpu()
    seconds = hangar(home, "pull", name)
    cpu = {k: process_tree_cpu(pid) - before[k] for k, pid in servers.items()}
    cpu["client"] = _children_cpu() - client
    shutil.rmtree(home, ignore_errors=True)
    return seconds, cpu


def create_model(home: Path, name: str, blob: Path) -> None:
    from client.config import load
    from client.store import Store
    from formats import mediatypes as mt
    from formats.manifest import Descriptor, Manifest
    from formats.names import ModelName

    store = Store(load({"HANGAR_HOME": str(home)}).models).ensure()
    digest, size = store.add_blob_file(blob)
    config, config_size = store.add_blob_bytes(b'{"model_format":"gguf"}\n')
    manifest = Manifest.build(
        Descriptor(mt.DOCKER_CONFIG, config, config_size), [Descriptor(mt.OLLAMA_MODEL, digest, size)]
    )
    store.put_manifest(ModelName.parse(name), manifest.raw)


def curl_verified(url: str, dest: Path, digest: str, hasher: list[str]) -> float:
    """curl to a file, then ``hasher`` over it (a command printing the hex digest last on its line)."""
    start = pull_single(url, dest)
    began = time.perf_counter()
    out = subprocess.run([*hasher, str(dest)], check=True, capture_output=True, text=True).stdout
    if digest.removeprefix("sha256:") not in out.split():
        raise SystemExit("curl fetched the wrong bytes")
    return start + time.perf_counter() - began


def skopeo_pull(url: str, repo: str, dest: Path) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    os.sync()
    start = time.perf_counter()
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--preserve-digests",
         f"docker://{url.split('://')[1]}/{repo}:v1", f"oci:{dest}:v1"],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - start


def pull_figures(
    work: Path, name: str, blob_url: str, ref_url: str, digest: str
) -> list[tuple[str, Callable[[], float]]]:
    """One timed pull of each kind, each removing what it wrote, under the name it is reported by."""
    work.mkdir(parents=True)

    def hangar_pull(fsync: str | None, *options: str) -> float:
        home = work / "hangar"
        home.mkdir()
        if fsync:
            (home / "config.toml").write_text(f"[transfer]\nfsync = {fsync}\n")
        seconds = hangar(home, "pull", *options, name)
        shutil.rmtree(home)
        return seconds

    def curl_to_file(hasher: list[str] | None) -> float:
        target = work / "curl.out"
        os.sync()
        seconds = curl_verified(blob_url, target, digest, hasher) if hasher else pull_single(blob_url, target)
        target.unlink()
        return seconds

    def skopeo() -> float:
        seconds = skopeo_pull(ref_url, "bench/skopeo", work / "skopeo")
        shutil.rmtree(work / "skopeo")
        return seconds

    return [
        ("hangar pull", lambda: hangar_pull(None)),
        ("hangar pull, fsync = true", lambda: hangar_pull("true")),
        ("hangar pull, one part at a time", lambda: hangar_pull(None, "--concurrency", "1")),
        ("curl pull", lambda: curl_to_file(None)),
        ("curl pull + sha256sum", lambda: curl_to_file(["sha256sum"])),
        ("curl pull + openssl", lambda: curl_to_file(["openssl", "dgst", "-sha256", "-r"])),
        ("skopeo pull", skopeo),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    for tool in ("curl", "skopeo", "docker-registry", "openssl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/setup.sh")

    work = OUT / "pull_push"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    size = args.size_mib * MiB
    blob = OUT / "registry" / "blob.bin"
    blob.parent.mkdir(parents=True, exist_ok=True)
    print(f"preparing a {args.size_mib} MiB model", flush=True)
    digest = make_blob(blob, size)
    chunks = split(blob, size)

    port = free_port()
    ours_url = f"http://127.0.0.1:{port}"
    ours = Server(
        [sys.executable, "-m", "cli", "registry", "serve", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(work / "ours"), "--log-level", "warning", "--workers", "2", "--signup", "open"],
        f"{ours_url}/v2/", work / "ours.log",
    )  # fmt: skip
    ref_server, ref_url = reference_registry(work / "reference")
    alice = work / "alice"
    results: dict[str, list[float]] = {}
    with ours, ref_server:
        subprocess.run(
            [sys.executable, "-m", "cli.main", "signin", f"127.0.0.1:{port}", "--username", "alice"],
            env={**os.environ, "HANGAR_HOME": str(alice)}, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        # skopeo's source: the same layer as an OCI artifact on the reference registry.
        push_chunked(ref_url, "bench/skopeo", chunks, digest)
        config = b"{}"
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        upload_small(ref_url, "bench/skopeo", config, config_digest)
        oci = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.model",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2},
            "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": size}],
        })  # fmt: skip
        curl("-X", "PUT", "-o", "/dev/null", "-H", f"Content-Type: {OCI_MANIFEST}", "--data-binary", oci,
             f"{ref_url}/v2/bench/skopeo/manifests/v1")  # fmt: skip

        create_model(alice, f"127.0.0.1:{port}/alice/model", blob)
        # Pushes first, then pulls: a pull right after a 1 GiB push on the same disk was a third
        # slower (the push's writes and freed blocks were still being dealt with).
        for run in range(args.runs):
            print(f"push {run + 1}/{args.runs}", flush=True)
            name = f"127.0.0.1:{port}/alice/model{run}"
            hangar(alice, "cp", f"127.0.0.1:{port}/alice/model", name)  # a new repository: a full upload
            results.setdefault("hangar push", []).append(size / hangar(alice, "push", name) / MiB)
            os.sync()
            results.setdefault("curl PATCH", []).append(
                size / push_chunked(ref_url, f"bench/curl{run}", chunks, digest) / MiB
            )
        os.sync()
        time.sleep(10)
        for run in range(args.runs):
            print(f"pull {run + 1}/{args.runs}", flush=True)
            name = f"127.0.0.1:{port}/alice/model{run}"
            blob_url = f"{ref_url}/v2/bench/curl{run}/blobs/{digest}"
            pulls = pull_figures(work / str(run), name, blob_url, ref_url, digest)
            # What one figure leaves behind (memory to reclaim, blocks to trim) slows the next on
            # this machine: a different order each run, so no figure always follows the same one.
            random.Random(run).shuffle(pulls)
            for label, figure in pulls:
                results.setdefault(label, []).append(size / figure() / MiB)

    med = {k: statistics.median(v) for k, v in results.items()}
    hp = med["hangar pull"]
    lines = [
        "## Client: pull and push of a 1 GiB model",
        "",
        f"`python bench/pull_push.py --runs {args.runs} --size-mib {args.size_mib}`, {time.strftime('%Y-%m-%d')}, "
        f"{machine()}. `hangar` against `hangar registry serve --workers 2` (SQLite, token auth, a signed-in "
        "user); curl and skopeo against Debian's docker-registry 2.8 (filesystem). Every command a fresh "
        "process started after `sync`; all pushes, then all pulls, the pull figures in a different order each run; "
        f"medians of {args.runs}. Pulls write to files on the "
        "same disk; `hangar pull` verifies the sha256 before the blob becomes visible (and by default lets the "
        "kernel write it back, see docs/client.md); curl does not verify, skopeo does.",
        "",
        "| figure | MiB/s | ratio | target |",
        "|---|---:|---:|---|",
        f'| hangar pull (4 ranged parts, verified; the default `fsync = "deferred"`) | {hp:,.0f} | | |',
        f"| curl GET → file, reference registry | {med['curl pull']:,.0f} | hangar / curl = "
        f"{hp / med['curl pull']:.2f}× | ≥ 0.9× |",
        f"| skopeo copy → OCI layout, reference registry | {med['skopeo pull']:,.0f} | hangar / skopeo = "
        f"{hp / med['skopeo pull']:.2f}× | ≥ 1.5× |",
        f"| curl GET → file, then `sha256sum` | {med['curl pull + sha256sum']:,.0f} | hangar / this = "
        f"{hp / med['curl pull + sha256sum']:.2f}× | |",
        f"| curl GET → file, then `openssl dgst -sha256` (SHA-NI) | {med['curl pull + openssl']:,.0f} | "
        f"hangar / this = {hp / med['curl pull + openssl']:.2f}× | |",
        f"| hangar pull with `fsync = true` (flushed before visible) | {med['hangar pull, fsync = true']:,.0f} | "
        f"/ curl = {med['hangar pull, fsync = true'] / med['curl pull']:.2f}×, / skopeo = "
        f"{med['hangar pull, fsync = true'] / med['skopeo pull']:.2f}× | |",
        f"| hangar pull `--concurrency 1` (one part at a time) | {med['hangar pull, one part at a time']:,.0f} | "
        f"/ curl = {med['hangar pull, one part at a time'] / med['curl pull']:.2f}× | |",
        f"| hangar push (16 × 64 MiB PATCH, token auth) | {med['hangar push']:,.0f} | | |",
        f"| curl PATCH 16 × 64 MiB, reference registry | {med['curl PATCH']:,.0f} | hangar / curl = "
        f"{med['hangar push'] / med['curl PATCH']:.2f}× | ≥ 1.0× |",
        "",
        "All runs (MiB/s): " + "; ".join(f"{k}: {[round(v) for v in vals]}" for k, vals in results.items()),
    ]
    body = "\n".join(lines)
    print(body)
    write_section("pull_push", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
