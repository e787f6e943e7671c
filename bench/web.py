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
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, hangar_registry, machine, write_section
from formats import mediatypes as mt
from formats.digest import Digest
from formats.manifest import Descriptor, Manifest
from registry import db
from registry.meta import Metadata
from registry.storage import BlobInfo, open_store
from registry.storage.filesystem import FilesystemStore
from registry.web.cards import DESCRIPTION_ANNOTATION
from registry.web.catalog import summarize
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


async def fill(data: Path, models: int, tags: int) -> dict[str, str]:
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

    async def push(name: str, tag: str, layers: list[Descriptor], description: str) -> None:
        for d in [config, *layers]:
            await asyncio.to_thread(meta.link_blob, name, BlobInfo(d.digest, d.size))
        doc = json.loads(Manifest.build(config, layers, mt.OCI_MANIFEST).raw)
        doc["annotations"] = {DESCRIPTION_ANNOTATION: description}  # as generic OCI clients set one
        manifest = Manifest.parse(json.dumps(doc).encode())
        await asyncio.to_thread(meta.put_manifest, name, manifest, tag)
        await summarize(meta, store, name, manifest.raw)

    start = time.perf_counter()
    names = []
    for i in range(models - 1):
        name = f"user{i % NAMESPACES:02d}/model-{i:05d}"
        words = " ".join(rng.sample(WORDS, 3))
        template = tools if i % 3 == 0 else plain
        await push(name, "latest", [model, template, params], f"A {words} model, number {i}.")
        if i % 10 == 9:
            await asyncio.to_thread(meta.set_repository_visibility, name, "private")
        names.append(name)
        if i % 1000 == 999:
            print(f"  {i + 1} models, {time.perf_counter() - start:.0f} s", flush=True)
    for t in range(tags):
        await push(BIG, f"v{t:03d}", [model, tools, params], f"One model with {tags} tags, tag {t}.")
    await push(BIG, "latest", [model, tools, params], f"One model with {tags} tags.")
    pulls = {(n, "latest"): rng.randint(0, 5000) for n in names}
    await asyncio.to_thread(meta.add_pulls, pulls)
    print(f"filled {models} models in {time.perf_counter() - start:.0f} s", flush=True)
    public = [n for i, n in enumerate(names) if i % 10 != 9]
    return {"sample": rng.choice(public), "namespace": "user07", "public": json.dumps(public)}


def measure(client: httpx.Client, paths: list[str], n: int) -> list[float]:
    """Milliseconds of ``n`` requests going round ``paths`` (after a warm-up of each path)."""
    for p in paths[:5]:
        r = client.get(p)
        assert r.status_code == 200, f"{p}: {r.status_code} {r.text[:200]}"
    times = []
    for i in range(n):
        path = paths[i % len(paths)]
        start = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 200, f"{path}: {r.status_code}"
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
        marker.write_text(json.dumps(asyncio.run(fill(data, args.models, args.tags))))
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
    results: list[tuple[str, float, float, float]] = []
    with server, httpx.Client(base_url=base, timeout=60) as client:
        for label, paths in pages:
            times = measure(client, paths, args.requests)
            results.append((label, statistics.median(times), percentile(times, 95), max(times)))
            print(f"{label}: p50 {results[-1][1]:.1f} ms, p95 {results[-1][2]:.1f} ms", flush=True)
    lines = [
        "## Web site: pages with 10,000 models",
        "",
        f"`python bench/web.py --models {args.models} --tags {args.tags} --requests {args.requests} "
        f"--workers {args.workers}`, {time.strftime('%Y-%m-%d')}, {machine()}. `hangar registry serve "
        f"--workers {args.workers} --auth required` on SQLite; {args.models:,} models in {NAMESPACES} namespaces "
        f"(every 10th private, every 3rd with tools), `{BIG}` with {args.tags + 1} tags; filled through "
        "`Metadata.put_manifest` and the push's `summarize` hook. One client on loopback, keep-alive, one "
        f"request at a time, anonymous; {args.requests} requests a page after a warm-up; model and tag pages "
        "go through random models (their cards mostly cold). Milliseconds as the client sees them (an upper "
        "bound of the server's time).",
        "",
        "| page | p50 ms | p95 ms | max ms | target p95 |",
        "|---|---:|---:|---:|---|",
    ]
    for label, p50, p95, top in results:
        lines.append(f"| `{label}` | {p50:.1f} | {p95:.1f} | {top:.1f} | < 50 ms {'✓' if p95 < 50 else '✗'} |")
    body = "\n".join(lines)
    print(body)
    write_section("web", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
