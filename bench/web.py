"""The registry's web site at scale (issue #11): 10,000 models, one of them with 100 tags, and the
time each page takes; writes its section of docs/benchmarks.md.

The database is filled through the registry's own code, as pushes fill it: for each model its
blobs are linked (``Metadata.link_blob``), its manifest stored and tagged (``Metadata.put_manifest``)
and its facts read from the blobs and kept (``registry.web.catalog.summarize``, the manifest PUT's
hook), on SQLite in a fresh data directory. 100 namespaces of 100 models; every 10th model is
private, every 3rd has a template with tools; pulls are added as the registry's batches add them.
Then ``hangar registry serve --auth required`` serves it and one client on loopback asks each page
in turn (keep-alive, one request at a time) as an anonymous visitor; the model pages go through
models at random, so most of them find their cards cold. Figures are the request's time as the
client sees it (so an upper bound of the server's time), p50 and p95.

Usage: python bench/web.py [--models 10000] [--tags 100] [--requests 200] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, hangar_registry, machine, write_section
from formats import mediatypes as mt
from formats.digest import Digest
from formats.manifest import Descriptor, Manifest
from registry import db
from registry.meta import ManifestFacts, Metadata
from registry.storage import BlobInfo, open_store
from registry.storage.filesystem import FilesystemStore
from registry.web.cards import DESCRIPTION_ANNOTATION
from registry.web.catalog import facts_of, summarize
from tests.tinymodels import CHAT_TEMPLATE, write_tiny_llama

NAMESPACES = 100
WORDS = ["fast", "small", "chat", "code", "vision", "math", "story", "legal", "medical", "poetry"]
BIG = "bigco/many-tags"


def blob(files: FilesystemStore, media_type: str, data: bytes) -> Descriptor:
    digest = Digest.of_bytes(data)
    path = files.blob_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Descriptor(media_type, digest, len(data))


def fill(data: Path, models: int, tags: int) -> dict[str, str]:
    """The database and blobs of ``models`` models; what the pages should ask for."""
    url = f"sqlite:///{data / 'registry.db'}"
    db.upgrade(url)
    meta = Metadata(db.make_engine(url))
    store = open_store(data)
    files = FilesystemStore(data / "blobs", uploads_dir=data / "uploads")
    gguf = write_tiny_llama(data.parent / "tiny.gguf", chat_template=CHAT_TEMPLATE).read_bytes()
    model = blob(files, mt.OLLAMA_MODEL, gguf)
    plain = blob(files, mt.OLLAMA_TEMPLATE, b"{{ .System }} {{ .Prompt }}")
    tools = blob(files, mt.OLLAMA_TEMPLATE, b"{{ if .Tools }}{{ .Tools }}{{ end }}{{ .Prompt }}")
    params = blob(files, mt.OLLAMA_PARAMS, json.dumps({"temperature": 0.5}).encode())
    config = blob(files, mt.DOCKER_CONFIG, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    rng = random.Random(1)

    known: dict[tuple[str, ...], ManifestFacts] = {}

    def push(name: str, tag: str, layers: list[Descriptor], description: str) -> None:
        for d in [config, *layers]:
            meta.link_blob(name, BlobInfo(d.digest, d.size))
        doc = json.loads(Manifest.build(config, layers, mt.OCI_MANIFEST).raw)
        doc["annotations"] = {DESCRIPTION_ANNOTATION: description}  # as generic OCI clients set one
        manifest = Manifest.parse(json.dumps(doc).encode())
        meta.put_manifest(name, manifest, tag)
        # The push's hook reads the blobs (summarize); manifests whose blobs are the same say the
        # same but for their description, so the blobs are read once per set of layers.
        layer_set = tuple(str(d.digest) for d in layers)
        if layer_set not in known:
            known[layer_set] = facts_of(asyncio.run(summarize(meta, store, name, manifest.raw)))
        meta.set_manifest_facts(name, str(manifest.digest), replace(known[layer_set], description=description))

    start = time.perf_counter()
    names = []
    for i in range(models - 1):
        name = f"user{i % NAMESPACES:02d}/model-{i:05d}"
        words = " ".join(rng.sample(WORDS, 3))
        template = tools if i % 3 == 0 else plain
        push(name, "latest", [model, template, params], f"A {words} model, number {i}.")
        if i % 10 == 9:
            meta.set_repository_visibility(name, "private")
        names.append(name)
        if i % 1000 == 999:
            print(f"  {i + 1} models, {time.perf_counter() - start:.0f} s", flush=True)
    for t in range(tags):
        push(BIG, f"v{t:03d}", [model, tools, params], f"One model with {tags} tags, tag {t}.")
    push(BIG, "latest", [model, tools, params], f"One model with {tags} tags.")
    pulls = {(n, "latest"): rng.randint(0, 5000) for n in names}
    meta.add_pulls(pulls)
    print(f"filled {models} models in {time.perf_counter() - start:.0f} s", flush=True)
    public = [n for i, n in enumerate(names) if i % 10 != 9]
    return {"sample": rng.choice(public), "namespace": "user07", "public": json.dumps(public)}


def measure(client: httpx.Client, paths: list[str], n: int) -> dict[str, list[float]]:
    """Milliseconds of ``n`` requests going round ``paths`` (after a warm-up of each path): as
    the client sees them, and as the site's ``Server-Timing`` says (its time and its CPU time)."""
    for p in paths[:5]:
        r = client.get(p)
        assert r.status_code == 200, f"{p}: {r.status_code} {r.text[:200]}"
    times: dict[str, list[float]] = {"client": [], "app": [], "cpu": []}
    for i in range(n):
        path = paths[i % len(paths)]
        start = time.perf_counter()
        r = client.get(path)
        times["client"].append((time.perf_counter() - start) * 1000)
        assert r.status_code == 200, f"{path}: {r.status_code}"
        timing = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
        times["app"].append(float(timing["app"]))
        times["cpu"].append(float(timing["cpu"]))
    return times


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--tags", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200, help="requests per page")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--keep", action="store_true", help="reuse bench/out/web from an earlier run with the same sizes"
    )
    args = parser.parse_args()

    work = OUT / "web"
    data = work / "data"
    marker = work / f"filled-{args.models}-{args.tags}.json"
    if not (args.keep and marker.exists()):
        shutil.rmtree(work, ignore_errors=True)
        data.mkdir(parents=True)
        marker.write_text(json.dumps(fill(data, args.models, args.tags)))
    plan = json.loads(marker.read_text())
    public: list[str] = json.loads(plan["public"])
    rng = random.Random(2)
    models = rng.sample(public, min(len(public), args.requests))
    pages = [
        ("/", ["/"]),
        ("/search?q=WORD", [f"/search?q={w}" for w in WORDS]),
        ("/search?q=WORD+WORD (two words)", [f"/search?q={a}+{b}" for a, b in itertools.pairwise(WORDS)]),
        ("/search?q=nothing-matches (every row read)", ["/search?q=zzzz-no-such-word"]),
        ("/search?c=tools&o=popular", ["/search?c=tools&o=popular"]),
        ("/search?o=newest&page=40", ["/search?o=newest&page=40"]),
        ("/{namespace} (100 models)", [f"/{plan['namespace']}"]),
        ("/{namespace}/{model} (random models)", [f"/{m}" for m in models]),
        (f"/{{namespace}}/{{model}} ({args.tags + 1} tags)", [f"/{BIG}"]),
        (f"/{{namespace}}/{{model}}/tags ({args.tags + 1} tags)", [f"/{BIG}/tags"]),
        ("/{namespace}/{model}:{tag}", [f"/{BIG}:v050", *[f"/{m}:latest" for m in models[:50]]]),
        ("/api/search?q=WORD", [f"/api/search?q={w}" for w in WORDS]),
    ]
    server, base = hangar_registry(data, workers=args.workers, auth="required")
    results: list[tuple[str, dict[str, list[float]]]] = []
    with server, httpx.Client(base_url=base, timeout=60) as client:
        for label, paths in pages:
            times = measure(client, paths, args.requests)
            results.append((label, times))
            print(f"{label}: server p95 {percentile(times['app'], 95):.1f} ms, "
                  f"CPU p95 {percentile(times['cpu'], 95):.1f} ms, client p95 {percentile(times['client'], 95):.1f} ms",
                  flush=True)  # fmt: skip
    load = os.getloadavg()
    lines = [
        "## Web site: pages with 10,000 models",
        "",
        f"`python bench/web.py --models {args.models} --tags {args.tags} --requests {args.requests} "
        f"--workers {args.workers}`, {time.strftime('%Y-%m-%d')}, {machine()}. `hangar registry serve "
        f"--workers {args.workers} --auth required` on SQLite; {args.models:,} models in {NAMESPACES} namespaces "
        f"(every 10th private, every 3rd with tools), `{BIG}` with {args.tags + 1} tags; filled through "
        "`Metadata.put_manifest` and the push's `summarize` hook (which reads the blobs once per set of layers). "
        "One client on loopback, keep-alive, one request at a time, anonymous; "
        f"{args.requests} requests a page after a warm-up; model and tag pages go through random models.",
        "",
        "*server*: the site's own time, from the request reaching it to its answer starting (its "
        "`Server-Timing: app`); *CPU*: the CPU time the registry spent meanwhile (`Server-Timing: cpu`, "
        "which other processes' load does not inflate); *client*: the whole request as the client sees it. "
        f"The machine's load average at the end of the run: {load[0]:.1f} on {os.cpu_count()} CPUs "
        "(the registry and this client alone make about 1); above that, wall times include waiting for a CPU.",
        "",
        "| page | server p50 | server p95 | CPU p50 | CPU p95 | client p50 | client p95 | target: server p95 < 50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, t in results:
        p95 = percentile(t["app"], 95)
        lines.append(
            f"| `{label}` | {statistics.median(t['app']):.1f} | {p95:.1f} | {statistics.median(t['cpu']):.1f} "
            f"| {percentile(t['cpu'], 95):.1f} | {statistics.median(t['client']):.1f} "
            f"| {percentile(t['client'], 95):.1f} | {'✓' if p95 < 50 else '✗'} |"
        )
    body = "\n".join(lines)
    print(body)
    write_section("web", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
