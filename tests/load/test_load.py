"""Load (#16): many clients at once against a real registry and a real ``hangar serve``, with zero
errors and nothing lost. Counts come from the environment so that CI runs a small version and
``scripts/load.sh`` the full one (issue #16's figures), which also writes the latencies to
``bench/out/load.json`` for docs/reliability.md:

    HANGAR_LOAD_PULLS     concurrent pulls of one model (manifest + blob, verified)
    HANGAR_LOAD_PUSHES    concurrent pushes of the same new blob to different repositories
    HANGAR_LOAD_TAGS      concurrent pushes of different tags to one repository
    HANGAR_LOAD_SECONDS   seconds of manifest GETs, as fast as the machine allows
    HANGAR_LOAD_CHATS     concurrent chat streams against one model, HANGAR_NUM_PARALLEL=2

The defaults are CI's (40, 12, 8, 5 s, 8); scripts/load.sh sets the issue's (200, 50, 20, 60 s, 32)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from formats import mediatypes as mt
from tests.conftest import populate
from tests.servers import REPO_ROOT, RegistryProcess, RuntimeProcess

PULLS = int(os.environ.get("HANGAR_LOAD_PULLS", "40"))
PUSHES = int(os.environ.get("HANGAR_LOAD_PUSHES", "12"))
TAGS = int(os.environ.get("HANGAR_LOAD_TAGS", "8"))
SECONDS = float(os.environ.get("HANGAR_LOAD_SECONDS", "5"))
CHATS = int(os.environ.get("HANGAR_LOAD_CHATS", "8"))
RESULTS = REPO_ROOT / "bench" / "out" / "load.json"


def record(name: str, figures: dict[str, float]) -> None:
    """Keep a run's figures (scripts/load.sh turns them into docs/reliability.md's table)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[name] = figures
    RESULTS.write_text(json.dumps(data, indent=2))


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_of(config: bytes, layer: bytes) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": mt.OLLAMA_MODEL, "digest": sha(layer), "size": len(layer)}],
    }).encode()  # fmt: skip


async def push_blob(client: httpx.AsyncClient, repo: str, data: bytes) -> None:
    r = await client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    r = await client.patch(r.headers["location"], content=data, headers={"Content-Range": f"0-{len(data) - 1}"})
    assert r.status_code == 202, r.text
    r = await client.put(r.headers["location"], params={"digest": sha(data)})
    assert r.status_code == 201, r.text


async def push_model(client: httpx.AsyncClient, repo: str, tag: str, config: bytes, layer: bytes) -> float:
    started = time.perf_counter()
    for data in (config, layer):
        if (await client.head(f"/v2/{repo}/blobs/{sha(data)}")).status_code != 200:
            await push_blob(client, repo, data)
    raw = manifest_of(config, layer)
    r = await client.put(f"/v2/{repo}/manifests/{tag}", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})
    assert r.status_code == 201, r.text
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(tmp_path_factory.mktemp("load") / "data", "", "--auth", "off", "--workers", "2").start()
    yield proc
    log = proc.log()
    proc.stop()
    assert "unhandled error" not in log and "Exception in ASGI application" not in log, log[-2000:]


def client_for(registry: RegistryProcess, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=registry.url, timeout=300, limits=limits, follow_redirects=True)


def test_concurrent_pulls_of_one_model(registry: RegistryProcess) -> None:
    config, layer = b'{"model_format":"gguf"}', os.urandom(2 * 1024 * 1024)

    async def run() -> list[float]:
        async with client_for(registry, PULLS) as client:
            await push_model(client, "load/pulled", "latest", config, layer)

            async def one() -> float:
                started = time.perf_counter()
                m = json.loads((await client.get("/v2/load/pulled/manifests/latest")).content)
                blob = await client.get(f"/v2/load/pulled/blobs/{m['layers'][0]['digest']}")
                assert blob.status_code == 200 and sha(blob.content) == sha(layer)
                return time.perf_counter() - started

            return await asyncio.gather(*(one() for _ in range(PULLS)))

    started = time.perf_counter()
    latencies = asyncio.run(run())
    record("pulls", {"count": PULLS, "seconds": time.perf_counter() - started, **percentiles(latencies)})
    assert len(latencies) == PULLS


def test_concurrent_pushes_of_one_new_blob_to_many_repositories(registry: RegistryProcess) -> None:
    config, layer = b'{"model_format":"gguf","n":1}', os.urandom(1024 * 1024)

    async def run() -> list[float]:
        async with client_for(registry, PUSHES) as client:
            times = await asyncio.gather(
                *(push_model(client, f"load/many{i}", "latest", config, layer) for i in range(PUSHES))
            )
            for i in range(PUSHES):  # every repository has the model, and its blob
                m = await client.get(f"/v2/load/many{i}/manifests/latest")
                assert m.content == manifest_of(config, layer)
                assert sha((await client.get(f"/v2/load/many{i}/blobs/{sha(layer)}")).content) == sha(layer)
            return list(times)

    latencies = asyncio.run(run())
    # One blob per digest on disk, whatever the number of writers.
    hexdigest = sha(layer)[7:]
    copies = list((registry.data_dir / "blobs").rglob(f"*{hexdigest}*"))
    assert len([p for p in copies if p.is_file()]) == 1, copies
    record("pushes_same_blob", {"count": PUSHES, **percentiles(latencies)})


def test_concurrent_tags_to_one_repository(registry: RegistryProcess) -> None:
    layer = os.urandom(256 * 1024)
    configs = [json.dumps({"model_format": "gguf", "tag": i}).encode() for i in range(TAGS)]

    async def run() -> list[float]:
        async with client_for(registry, TAGS) as client:
            times = await asyncio.gather(
                *(push_model(client, "load/tagged", f"t{i}", configs[i], layer) for i in range(TAGS))
            )
            listed = (await client.get("/v2/load/tagged/tags/list", params={"n": 1000})).json()["tags"]
            assert sorted(listed) == sorted(f"t{i}" for i in range(TAGS))
            for i in range(TAGS):  # each tag names exactly its own manifest
                got = await client.get(f"/v2/load/tagged/manifests/t{i}")
                assert got.content == manifest_of(configs[i], layer)
            return list(times)

    latencies = asyncio.run(run())
    record("tags_one_repository", {"count": TAGS, **percentiles(latencies)})


def test_manifest_gets_as_fast_as_the_machine_allows(registry: RegistryProcess) -> None:
    config, layer = b'{"model_format":"gguf","n":2}', b"weights"
    connections = 32

    async def run() -> tuple[int, list[float]]:
        async with client_for(registry, connections) as client:
            await push_model(client, "load/hot", "latest", config, layer)
            expected = manifest_of(config, layer)
            deadline = time.monotonic() + SECONDS
            latencies: list[float] = []
            errors = 0

            async def worker() -> None:
                nonlocal errors
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    r = await client.get("/v2/load/hot/manifests/latest")
                    latencies.append(time.perf_counter() - started)
                    if r.status_code != 200 or r.content != expected:
                        errors += 1

            await asyncio.gather(*(worker() for _ in range(connections)))
            return errors, latencies

    errors, latencies = asyncio.run(run())
    assert errors == 0
    record("manifest_gets", {"seconds": SECONDS, "requests": len(latencies), "per_second": len(latencies) / SECONDS,
                             **percentiles(latencies)})  # fmt: skip


def test_concurrent_chats_with_fewer_slots(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """More streams than slots: every one is answered in full (queued, none lost); beyond the
    queue limit the answer is 503 at once, as Ollama's OLLAMA_MAX_QUEUE; the daemon's memory stays
    bounded."""
    home = tmp_path / "home"
    populate(home, tiny_models)
    queue = max(2, CHATS // 2)
    daemon = RuntimeProcess(home, HANGAR_NUM_PARALLEL="2", HANGAR_MAX_QUEUE=str(queue)).start()
    try:

        async def run() -> list[tuple[int, float, str]]:
            limits = httpx.Limits(max_connections=CHATS + 4)
            async with httpx.AsyncClient(base_url=daemon.url, timeout=600, limits=limits) as client:

                async def one(i: int) -> tuple[int, float, str]:
                    started = time.perf_counter()
                    body = {"model": "tiny-greedy", "stream": True, "options": {"num_predict": 8, "seed": i},
                            "messages": [{"role": "user", "content": f"count to {i}"}]}  # fmt: skip
                    async with client.stream("POST", "/api/chat", json=body) as r:
                        if r.status_code != 200:
                            return r.status_code, time.perf_counter() - started, (await r.aread()).decode()
                        lines = [json.loads(line) async for line in r.aiter_lines() if line.strip()]
                    assert lines[-1]["done"] is True and "error" not in lines[-1], lines[-1]
                    return 200, time.perf_counter() - started, lines[-1]["done_reason"]

                warm = await client.post("/api/chat", json={"model": "tiny-greedy", "stream": False, "messages": []})
                assert warm.status_code == 200  # loaded: from now on two run while the others wait
                return await asyncio.gather(*(one(i) for i in range(CHATS)))

        answers = asyncio.run(run())
        status = [a[0] for a in answers]
        assert set(status) <= {200, 503}, answers
        served = status.count(200)
        # Two decode at once and `queue` wait: the rest (if any) is refused at once, never lost.
        assert served >= min(CHATS, 2 + queue), answers
        for code, _, text in answers:
            if code == 503:
                assert "queue" in text.lower() or "busy" in text.lower(), text
        memory_mib = _rss_mib(daemon)
        assert memory_mib < 1024, memory_mib
        record("chats", {"count": CHATS, "served": served, "refused": status.count(503), "daemon_rss_mib": memory_mib,
                         **percentiles([a[1] for a in answers if a[0] == 200])})  # fmt: skip
    finally:
        daemon.stop()


def _rss_mib(daemon: RuntimeProcess) -> float:
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the peak resident size so far
            return int(line.split()[1]) / 1024
    return 0.0
