"""Scheduling and serving behaviour of a real ``hangar serve``: keep-alive, eviction, queueing,
client disconnects, concurrent requests, and the guards (API key, Host, CORS)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import populate
from tests.servers import RuntimeProcess, wait_until

LONG = {"model": "tiny-long", "prompt": "hello", "options": {"num_predict": 100000, "temperature": 0}}


@pytest.fixture
def make_runtime(tmp_path: Path, tiny_models: dict[str, Path]) -> Iterator:  # type: ignore[type-arg]
    started: list[RuntimeProcess] = []

    def make(**env: str) -> RuntimeProcess:
        home = tmp_path / f"home{len(started)}"
        populate(home, tiny_models)
        proc = RuntimeProcess(home, **env).start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


def loaded(url: str) -> list[str]:
    return [m["name"] for m in httpx.get(url + "/api/ps").json()["models"]]


def expires(url: str, name: str) -> str | None:
    """The loaded model's ``expires_at`` (``2318-…`` while a request uses it), None if not loaded."""
    return next((m["expires_at"] for m in httpx.get(url + "/api/ps").json()["models"] if m["name"] == name), None)


def queued(url: str) -> int:
    """Requests queued for a model (Hangar's X-Hangar-Waiting header on /api/ps)."""
    return int(httpx.get(url + "/api/ps").headers["x-hangar-waiting"])


def unix(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp[:19] + "+00:00").timestamp()


def test_keep_alive_expiry(runtime: RuntimeProcess) -> None:
    # A long keep-alive first, so that "still loaded" is no race on a busy machine.
    r = httpx.post(
        runtime.url + "/api/generate",
        json={
            "model": "tiny-legacy",
            "prompt": "x",
            "keep_alive": "10m",
            "stream": False,
            "options": {"num_predict": 2},
        },
        timeout=60,
    )
    assert r.status_code == 200
    until = expires(runtime.url, "tiny-legacy:latest")
    assert until is not None and 590 < unix(until) - time.time() <= 601
    # Then one second: it goes by itself, at the time /api/ps announces.
    r = httpx.post(runtime.url + "/api/generate", json={"model": "tiny-legacy", "keep_alive": 1}, timeout=60)
    assert r.json()["done_reason"] == "load"
    until = expires(runtime.url, "tiny-legacy:latest")
    assert until is None or unix(until) - time.time() <= 1.5
    wait_until(lambda: "tiny-legacy:latest" not in loaded(runtime.url), 30, "the model to be unloaded")
    # keep_alive 0 unloads right after the request.
    httpx.post(
        runtime.url + "/api/generate",
        json={"model": "tiny-legacy", "prompt": "x", "keep_alive": 0, "stream": False, "options": {"num_predict": 1}},
        timeout=60,
    )
    assert "tiny-legacy:latest" not in loaded(runtime.url)
    # Negative: forever.
    httpx.post(runtime.url + "/api/generate", json={"model": "tiny-legacy", "keep_alive": -1}, timeout=60)
    entry = next(m for m in httpx.get(runtime.url + "/api/ps").json()["models"] if m["name"] == "tiny-legacy:latest")
    assert entry["expires_at"].startswith("2318")
    httpx.post(runtime.url + "/api/generate", json={"model": "tiny-legacy", "keep_alive": 0}, timeout=60)


def test_least_recently_used_model_is_evicted(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(HANGAR_MAX_LOADED_MODELS="2")
    for model in ("tiny", "tiny-go"):
        httpx.post(rt.url + "/api/generate", json={"model": model}, timeout=60)
    httpx.post(
        rt.url + "/api/generate",
        json={"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 1}},
        timeout=60,
    )  # tiny is now the newest
    httpx.post(rt.url + "/api/generate", json={"model": "tiny-tools"}, timeout=60)
    assert sorted(loaded(rt.url)) == ["tiny-tools:latest", "tiny:latest"]  # tiny-go went
    # Changing a runner option (num_ctx) reloads the model with it.
    httpx.post(rt.url + "/api/generate", json={"model": "tiny", "options": {"num_ctx": 128}}, timeout=60)
    entry = next(m for m in httpx.get(rt.url + "/api/ps").json()["models"] if m["name"] == "tiny:latest")
    assert entry["context_length"] == 128


def _start_stream(url: str, body: dict) -> tuple[socket.socket, bytes]:
    """Send a request on a raw socket and read until the first NDJSON line has arrived."""
    host, port = url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)))
    payload = json.dumps(body).encode()
    sock.sendall(
        f"POST /api/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while b'"done":false' not in received:
        received += sock.recv(65536)
    return sock, received


def test_client_disconnect_stops_generation(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(HANGAR_NUM_PARALLEL="1")

    def in_use() -> bool:
        return (expires(rt.url, "tiny-long:latest") or "").startswith("2318")

    # Greedy decoding of this prompt runs ~16k tokens (20 s or more) unless stopped: the model
    # must be free again long before that.
    sock, _ = _start_stream(rt.url, LONG)
    assert in_use()
    sock.close()
    wait_until(lambda: not in_use(), 10, "the abandoned generation to stop")

    # The same for a request that was not streaming, closed once it is generating.
    host, port = rt.url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)))
    payload = json.dumps({**LONG, "stream": False}).encode()
    sock.sendall(
        f"POST /api/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    wait_until(in_use, 30, "the request to start generating")
    sock.close()
    wait_until(lambda: not in_use(), 10, "the abandoned generation to stop")
    r = httpx.post(
        rt.url + "/api/generate",
        json={"model": "tiny-long", "prompt": "x", "stream": False, "options": {"num_predict": 1}},
        timeout=60,
    )
    assert r.status_code == 200


def test_full_queue_answers_503(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(HANGAR_NUM_PARALLEL="1", HANGAR_MAX_QUEUE="1")
    running, _ = _start_stream(rt.url, LONG)  # holds the only slot
    waiting: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: waiting.append(
            httpx.post(
                rt.url + "/api/generate",
                json={"model": "tiny-long", "prompt": "y", "stream": False, "options": {"num_predict": 1}},
                timeout=60,
            )
        )
    )
    thread.start()
    wait_until(lambda: queued(rt.url) == 1, 30, "the second request to be queued")
    r = httpx.post(
        rt.url + "/api/generate", json={"model": "tiny-long", "prompt": "z", "options": {"num_predict": 1}}, timeout=60
    )
    assert r.status_code == 503
    assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    running.close()  # the queued request then runs
    thread.join(30)
    assert waiting and waiting[0].status_code == 200


def test_concurrent_requests_do_not_mix(make_runtime) -> None:  # type: ignore[no-untyped-def]
    """Four sampled requests, two at a time, against each alone. llama.cpp is not bit-stable across
    batch shapes, so a reply decoded beside another may leave its solo path after a while: the
    first tokens must be the same, and no reply may hold a run of another's tokens."""
    rt = make_runtime(HANGAR_NUM_PARALLEL="2")
    n = 8  # tokens compared

    def ask(seed: int) -> list[int]:
        """The reply's tokens (the end of the context sent back)."""
        r = httpx.post(
            rt.url + "/api/generate",
            json={
                "model": "tiny-long",
                "prompt": f"prompt {seed}",
                "stream": False,
                "options": {"num_predict": 30, "seed": seed, "temperature": 0.9},
            },
            timeout=120,
        ).json()
        return list(r["context"][len(r["context"]) - r.get("eval_count", 0) :])

    alone = {seed: ask(seed) for seed in (1, 2, 3, 4)}
    results: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, ask(s))) for s in alone]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == sorted(alone)
    runs = {seed: _runs(tokens, n) for seed, tokens in alone.items()}
    for seed, tokens in results.items():
        solo = alone[seed]
        assert tokens[:n] == solo[:n], (seed, tokens, solo)
        # Any n tokens in a row of another request's solo reply (and not of its own) would be
        # that request's output leaking into this one, wherever it began.
        foreign = {run for other, r in runs.items() if other != seed for run in r} - runs[seed]
        assert not _runs(tokens, n) & foreign, (seed, tokens)


def _runs(tokens: list[int], n: int) -> set[tuple[int, ...]]:
    """Every ``n`` tokens in a row of ``tokens``."""
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def test_api_key_host_guard_and_cors(make_runtime) -> None:  # type: ignore[no-untyped-def]
    rt = make_runtime(HANGAR_API_KEY="s3cret", HANGAR_ORIGINS="https://chat.example.com")
    assert httpx.get(rt.url + "/").status_code == 200  # the liveness check stays open
    r = httpx.get(rt.url + "/api/tags")
    assert r.status_code == 401 and "HANGAR_API_KEY" in r.json()["error"]
    assert httpx.get(rt.url + "/api/tags", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(rt.url + "/api/tags", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    # DNS rebinding: a foreign Host name never reaches a loopback listener.
    assert httpx.get(rt.url + "/", headers={"Host": "evil.example.com"}).status_code == 403
    assert httpx.get(rt.url + "/", headers={"Host": "my-box.local"}).status_code == 200
    preflight = {"Access-Control-Request-Method": "POST"}
    ok = httpx.options(rt.url + "/api/chat", headers={**preflight, "Origin": "http://localhost:3000"})
    assert ok.headers.get("access-control-allow-origin") == "http://localhost:3000"
    extra = httpx.options(rt.url + "/api/chat", headers={**preflight, "Origin": "https://chat.example.com"})
    assert extra.headers.get("access-control-allow-origin") == "https://chat.example.com"
    foreign = httpx.options(rt.url + "/api/chat", headers={**preflight, "Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in foreign.headers
