"""Decode speed and time to first token: ``hangar serve`` (``POST /api/generate``, streaming)
side by side in one run with llama-cpp-python in-process (``Llama.create_completion(stream=True)``),
on the real small model (Gemma 3 270M Q4_K_M); writes docs/benchmarks.md.

Both sides load the same GGUF with the same context, batch and thread count and decode greedily
(temperature 0) the same number of tokens from the same prompt. Each run uses a new prompt (its
first words differ), so neither side reuses a cached prefix; runs alternate which side goes first
and pause between measurements so one side's idle OpenMP threads stop spinning before the other
starts. Both figures are taken by the client: time to first token from just before the request
(or call) to the first streamed token, decode rate over the tokens after the first.

Under load (issue #14): N clients (1, 2, 4, 8) start streaming at once, each with its own new
prompt; the aggregate decode rate is every client's tokens after its first over the span from
the earliest first token to the latest last one, against one client alone, with each client's
time to first token (p50/p95 over all rounds). And a chat's second turn: a prompt that repeats
the first turn (about 600 tokens) and its reply and adds a question, its time to first token
against the first turn's (the second reuses the cached prefix). Beside the load figures, the
ceiling: the same numbers of sequences decoded together by llama.cpp alone (no sampling, no
HTTP), which bounds what any batching server gets from this machine and this build.

Usage: python bench/inference.py [--runs N] [--tokens N] [--threads N] [--clients 1,2,4,8] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, Server, free_port, gemma_gguf, machine, write_section

# A system prompt of about 600 tokens that every turn of the benchmark's chat repeats.
CHAT_SYSTEM = "You are a patient storyteller. " + " ".join(
    f"Rule {i}: keep the story gentle, name every character, and end each part with a question." for i in range(1, 31)
)
PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
NUM_CTX = 2048
NUM_BATCH = 512


@dataclass
class Sample:
    ttft: float  # seconds
    tokens: int
    decode: float  # seconds from the first token to the last

    @property
    def rate(self) -> float:
        return (self.tokens - 1) / self.decode if self.tokens > 1 and self.decode > 0 else 0.0


def create_model(home: Path, name: str, gguf: Path) -> None:
    from client.config import load
    from client.store import Store
    from formats import mediatypes as mt
    from formats.manifest import Descriptor, Manifest
    from formats.names import ModelName

    store = Store(load({"HANGAR_HOME": str(home)}).models).ensure()
    digest, size = store.add_blob_file(gguf)
    config, config_size = store.add_blob_bytes(b'{"model_format":"gguf","model_family":"gemma3"}\n')
    template, template_size = store.add_blob_bytes(b"{{ .Prompt }}")
    manifest = Manifest.build(
        Descriptor(mt.DOCKER_CONFIG, config, config_size),
        [Descriptor(mt.OLLAMA_MODEL, digest, size), Descriptor(mt.OLLAMA_TEMPLATE, template, template_size)],
    )
    store.put_manifest(ModelName.parse(name), manifest.raw)


def raw_sample(llm: object, prompt: str, tokens: int) -> Sample:
    start = time.perf_counter()
    first = last = 0.0
    count = 0
    stream = llm.create_completion(  # type: ignore[attr-defined]
        prompt, max_tokens=tokens, temperature=0.0, top_k=40, top_p=0.9, min_p=0.0, repeat_penalty=1.0, stream=True
    )
    for _chunk in stream:
        last = time.perf_counter()
        first = first or last
        count += 1
    return Sample(first - start, count, last - first)


@dataclass
class Stream:
    start: float  # perf_counter when the request went out
    first: float
    last: float
    tokens: int
    prompt_eval_count: int = 0

    @property
    def ttft(self) -> float:
        return self.first - self.start


def hangar_stream(client: httpx.Client, prompt: str, tokens: int, threads: int) -> Stream:
    """One streamed request, with absolute times (to line several up)."""
    start = time.perf_counter()
    first = last = 0.0
    with client.stream("POST", "/api/generate", json=request_body(prompt, tokens, threads)) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            item = json.loads(line)
            if item.get("done"):
                return Stream(start, first, last, int(item["eval_count"]), int(item.get("prompt_eval_count", 0)))
            last = time.perf_counter()
            first = first or last
    raise RuntimeError("the stream ended without its final item")


def concurrent_round(url: str, prompts: list[str], tokens: int, threads: int) -> list[Stream]:
    """All prompts sent at once, one client each."""
    out: list[Stream | None] = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            barrier.wait()
            out[i] = hangar_stream(c, prompts[i], tokens, threads)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all(s is not None for s in out), "a client failed"
    return [s for s in out if s is not None]


def aggregate_rate(streams: list[Stream]) -> float:
    """Decode tokens (after each first one) per second over the span they were decoded in."""
    span = max(s.last for s in streams) - min(s.first for s in streams)
    return sum(s.tokens - 1 for s in streams) / span if span > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def request_body(prompt: str, tokens: int, threads: int) -> dict[str, object]:
    return {
        "model": "bench/gemma3",
        "prompt": prompt,
        "raw": True,
        "stream": True,
        "options": {
            "num_predict": tokens,
            "temperature": 0,
            "top_k": 40,
            "top_p": 0.9,
            "min_p": 0,
            "repeat_penalty": 1.0,
            "num_ctx": NUM_CTX,
            "num_batch": NUM_BATCH,
            "num_thread": threads,
        },
    }


def decode_ceiling(gguf: Path, threads: int, n_seq: int, n_slots: int, steps: int = 64) -> float:
    """Tokens/s of ``n_seq`` sequences decoded together by llama.cpp alone: the context the
    server makes (``n_slots`` sequences of NUM_CTX), one ``llama_decode`` a step with one token of
    each sequence, no sampling, no HTTP, no event loop. What batching can give on this machine at
    best: the server's aggregate rate is measured against it."""
    import llama_cpp
    from llama_cpp import Llama

    from runtime.engine import _parallel_context

    llm = Llama(
        str(gguf), n_ctx=NUM_CTX, n_batch=NUM_BATCH, n_ubatch=NUM_BATCH,
        n_threads=threads, n_threads_batch=threads, n_gpu_layers=0, verbose=False,
    )  # fmt: skip
    _parallel_context(llm, NUM_CTX, n_slots)
    ctx = llm._ctx.ctx
    batch = llama_cpp.llama_batch_init(NUM_BATCH, 0, 1)
    try:

        def put(i: int, token: int, pos: int, seq: int) -> None:
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, True
            batch.seq_id[i][0] = seq

        prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
        for seq in range(n_seq):
            for i, token in enumerate(prompt):
                put(i, token, i, seq)
            batch.n_tokens = len(prompt)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        start = time.perf_counter()
        for step in range(steps):
            for seq in range(n_seq):
                put(seq, prompt[(step + seq) % len(prompt)], len(prompt) + step, seq)
            batch.n_tokens = n_seq
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        return n_seq * steps / (time.perf_counter() - start)
    finally:
        llama_cpp.llama_batch_free(batch)
        llm.close()


def hangar_sample(client: httpx.Client, prompt: str, tokens: int, threads: int) -> Sample:
    body = request_body(prompt, tokens, threads)
    start = time.perf_counter()
    first = last = 0.0
    count = 0
    with client.stream("POST", "/api/generate", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            item = json.loads(line)
            if item.get("done"):
                count = int(item["eval_count"])
                break
            now = time.perf_counter()
            last = now
            first = first or now
    return Sample(first - start, count, last - first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads on both sides (0: physical cores)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between measurements")
    parser.add_argument("--clients", default="1,2,4,8", help="concurrent clients to measure, comma-separated")
    parser.add_argument("--load-runs", type=int, default=3, help="rounds of each number of clients")
    parser.add_argument("--chat-runs", type=int, default=5, help="two-turn conversations timed")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave docs/benchmarks.md alone")
    args = parser.parse_args()
    clients = [int(n) for n in args.clients.split(",") if n.strip()]

    from llama_cpp import Llama

    from runtime.engine import default_threads

    threads = args.threads or default_threads()
    gguf = gemma_gguf()
    OUT.mkdir(parents=True, exist_ok=True)
    raw: list[Sample] = []
    ours: list[Sample] = []
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        home = Path(tmp) / "home"
        create_model(home, "bench/gemma3", gguf)
        port = free_port()
        env = {**os.environ, "HANGAR_HOME": str(home), "HANGAR_HOST": f"127.0.0.1:{port}", "HANGAR_KEEP_ALIVE": "-1"}
        env["HANGAR_NUM_PARALLEL"] = str(max(clients, default=1))
        env.pop("HANGAR_MODELS", None)
        server = Server(
            [sys.executable, "-m", "cli.main", "serve", "--log-level", "warning"],
            f"http://127.0.0.1:{port}/",
            Path(tmp) / "serve.log",
            env,
        )
        llm = Llama(
            str(gguf), n_ctx=NUM_CTX, n_batch=NUM_BATCH, n_ubatch=NUM_BATCH,
            n_threads=threads, n_threads_batch=threads, n_gpu_layers=0, verbose=False,
        )  # fmt: skip
        with server, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            # Warm both: the model loaded, pages in memory, code paths taken once.
            hangar_sample(client, "Warm up: " + PROMPT, 16, threads)
            raw_sample(llm, "Warm up: " + PROMPT, 16)
            for run in range(args.runs):
                prompt = f"Story {run + 1}. {PROMPT}"
                order = ("raw", "hangar") if run % 2 == 0 else ("hangar", "raw")
                for side in order:
                    time.sleep(args.pause)
                    if side == "raw":
                        raw.append(raw_sample(llm, prompt, args.tokens))
                    else:
                        ours.append(hangar_sample(client, prompt, args.tokens, threads))
                print(
                    f"run {run + 1}/{args.runs}: raw {raw[-1].rate:.1f} tok/s, ttft {raw[-1].ttft * 1000:.1f} ms; "
                    f"hangar {ours[-1].rate:.1f} tok/s, ttft {ours[-1].ttft * 1000:.1f} ms",
                    flush=True,
                )
            llm.close()  # its threads must not compete with the server's from here on
            ceiling: dict[int, list[float]] = {n: [] for n in clients}
            for _round in range(args.load_runs):
                for n in clients:
                    time.sleep(args.pause)
                    ceiling[n].append(decode_ceiling(gguf, threads, n, max(clients, default=1)))
                print("llama.cpp alone: " + ", ".join(f"{n}: {v[-1]:.1f}" for n, v in ceiling.items()), flush=True)
            load: dict[int, list[list[Stream]]] = {n: [] for n in clients}
            url = f"http://127.0.0.1:{port}"
            for run in range(args.load_runs):
                for n in clients:
                    time.sleep(args.pause)
                    prompts = [f"Load {run + 1}.{n}.{i + 1}. {PROMPT}" for i in range(n)]
                    load[n].append(concurrent_round(url, prompts, args.tokens, threads))
                    print(f"load round {run + 1}, {n} clients: {aggregate_rate(load[n][-1]):.1f} tok/s", flush=True)
            first_turns: list[Stream] = []
            second_turns: list[Stream] = []
            for run in range(args.chat_runs):
                time.sleep(args.pause)
                history = f"Conversation {run + 1}. " + CHAT_SYSTEM + "\nUser: " + PROMPT + "\nAssistant:"
                one = hangar_stream(client, history, 32, threads)
                reply = client.post("/api/generate", json={**request_body(history, 32, threads), "stream": False})
                history += reply.json()["response"] + "\nUser: And then what happened?\nAssistant:"
                time.sleep(args.pause)
                two = hangar_stream(client, history, 32, threads)
                first_turns.append(one)
                second_turns.append(two)
                print(f"chat {run + 1}: first turn ttft {one.ttft * 1000:.1f} ms ({one.prompt_eval_count} tokens), "
                      f"second {two.ttft * 1000:.1f} ms ({two.prompt_eval_count} tokens)", flush=True)  # fmt: skip

    def med(samples: list[Sample], what: str) -> float:
        return statistics.median(getattr(s, what) for s in samples)

    raw_rate, our_rate = med(raw, "rate"), med(ours, "rate")
    raw_ttft, our_ttft = med(raw, "ttft") * 1000, med(ours, "ttft") * 1000
    added = statistics.median((o.ttft - r.ttft) * 1000 for o, r in zip(ours, raw, strict=True))
    ratios = [o.rate / r.rate for o, r in zip(ours, raw, strict=True)]
    lines = [
        "## Runtime: decode speed and time to first token",
        "",
        f"`python bench/inference.py --runs {args.runs} --tokens {args.tokens}`, {time.strftime('%Y-%m-%d')}, "
        f"{machine()}, CPU build of llama-cpp-python 0.3.36 (`GGML_NATIVE=OFF`), {threads} threads on both sides. "
        f"Gemma 3 270M Q4_K_M, num_ctx {NUM_CTX}, greedy, {args.tokens} tokens from a {len(PROMPT.split()) + 2}-word "
        "prompt that is new each run. Raw: `Llama.create_completion(stream=True)` in the benchmark's process. "
        "Hangar: `hangar serve` (model already loaded), `POST /api/generate` with `raw: true`, streaming, "
        f"timed by an httpx client on the same machine. Medians of {args.runs} alternating runs.",
        "",
        "| figure | llama-cpp-python in-process | hangar serve over HTTP | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| decode, tokens/s | {raw_rate:.1f} | {our_rate:.1f} | {statistics.median(ratios):.3f}× (median of "
        "per-run ratios) | ≥ 0.97× |",
        f"| time to first token, ms | {raw_ttft:.1f} | {our_ttft:.1f} | {added:+.1f} ms (median of per-run "
        "differences) | ≤ +20 ms |",
        "",
        "All runs: raw tok/s " + str([round(s.rate, 1) for s in raw]) + ", hangar tok/s "
        + str([round(s.rate, 1) for s in ours]) + "; raw ttft ms " + str([round(s.ttft * 1000, 1) for s in raw])
        + ", hangar ttft ms " + str([round(s.ttft * 1000, 1) for s in ours]) + ".",
    ]  # fmt: skip
    single = statistics.median(aggregate_rate(r) for r in load[clients[0]]) if clients else 0.0
    lines += [
        "",
        "### Under load: concurrent clients (continuous batching)",
        "",
        f"The same server (`HANGAR_NUM_PARALLEL={max(clients, default=1)}`), {args.tokens} greedy tokens per client, "
        f"every client with its own new prompt, all sent at once; {args.load_runs} rounds of each. Aggregate: all "
        "clients' tokens after their first over the span from the earliest first token to the latest last one.",
        "",
        "Beside it, the ceiling: llama.cpp alone in the benchmark's process (the server idle, its model's "
        "threads asleep) decoding the same number of sequences together in the context the server makes, one "
        "`llama_decode` a step, no sampling, no HTTP; medians of as many rounds.",
        "",
        "| clients | aggregate decode, tokens/s | × one client | llama.cpp alone, tokens/s | × its one sequence "
        "| server / llama.cpp alone | time to first token p50 / p95, ms | goal |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    solo = statistics.median(ceiling[clients[0]]) if clients else 0.0
    for n in clients:
        rate = statistics.median(aggregate_rate(r) for r in load[n])
        alone = statistics.median(ceiling[n])
        ttfts = [s.ttft * 1000 for r in load[n] for s in r]
        goal = "≥ 2.0×" if n == 4 else ""
        lines.append(
            f"| {n} | {rate:.1f} | {rate / single:.2f}× | {alone:.1f} | {alone / solo:.2f}× | {rate / alone:.2f} "
            f"| {percentile(ttfts, 0.5):.0f} / {percentile(ttfts, 0.95):.0f} | {goal} |"
        )
    first_ttft = statistics.median(s.ttft for s in first_turns) * 1000
    second_ttft = statistics.median(s.ttft for s in second_turns) * 1000
    lines += [
        "",
        f"A chat's second turn (prompt cache): {args.chat_runs} conversations, a first turn of about 690 prompt "
        "tokens, then the whole conversation again with a new question, all but the new tokens from the cache "
        f"(`prompt_eval_count`: {statistics.median(s.prompt_eval_count for s in first_turns):.0f}, then "
        f"{statistics.median(s.prompt_eval_count for s in second_turns):.0f}). "
        f"Time to first token {first_ttft:.1f} ms → {second_ttft:.1f} ms, "
        f"{second_ttft / first_ttft:.2f}× (goal ≤ 0.5×).",
        "",
        "All rounds, tok/s: " + "; ".join(
            f"{n}: " + str([round(aggregate_rate(r), 1) for r in load[n]]) for n in clients
        ) + ".",
    ]  # fmt: skip
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("inference", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
