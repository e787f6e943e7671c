"""Real servers for the tests: a throwaway PostgreSQL cluster and registry processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class PostgresCluster:
    """``initdb`` + ``pg_ctl`` in a temporary directory, trust auth on a free loopback port."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = bins[-1] if bins else shutil.which("initdb")
        if not initdb:
            raise RuntimeError("PostgreSQL server binaries not found: run scripts/test (it installs postgresql)")
        self.bindir = Path(initdb).parent
        self.dir = Path(tempfile.mkdtemp(prefix="hangar-pg-"))
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self.start_server()
        self._databases = 0

    def start_server(self) -> None:
        """Starts the server (again, after ``stop_server``: same port, same data)."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            "start",
        )

    def stop_server(self) -> None:
        """Stops the server, keeping its data, as an outage would (connections are cut)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def _run(self, *cmd: str) -> None:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self._as_postgres else list(cmd)
        subprocess.run(full, check=True, capture_output=True)

    def create_database(self) -> str:
        """A fresh database; returns its SQLAlchemy URL."""
        import psycopg

        self._databases += 1
        name = f"hangar_{os.getpid()}_{self._databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class RegistryProcess:
    """``hangar registry serve`` in a subprocess; restartable, killable."""

    def __init__(self, data_dir: Path, database_url: str = "", *extra_args: str) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def tls_cert(self) -> str | None:
        args = self.extra_args
        return args[args.index("--ssl-certfile") + 1] if "--ssl-certfile" in args else None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RegistryProcess:
        cmd = [
            sys.executable,
            "-m",
            "cli",
            "registry",
            "serve",
            "--listen",
            self.host,
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "warning",
        ]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        cmd += self.extra_args
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            verify = ssl.create_default_context(cafile=self.tls_cert) if self.tls_cert else True
            try:
                return httpx.get(self.url + "/v2/", timeout=1, verify=verify).status_code in (200, 401)
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "the registry to start")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup runs."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)
        self.proc = None

    def restart(self) -> RegistryProcess:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def registries(
    data_dir: Callable[[int], Path], database_url: str = "", *args: str
) -> Iterator[Callable[..., RegistryProcess]]:
    """``start(*extra)``: a started ``hangar registry serve`` with ``args`` and ``extra``, without
    authentication unless they name ``--auth``, on the data directory ``data_dir(n)`` for the
    n-th started; every one stopped at the end."""
    started: list[RegistryProcess] = []

    def start(*extra: str) -> RegistryProcess:
        auth = () if "--auth" in args + extra else ("--auth", "off")
        proc = RegistryProcess(data_dir(len(started)), database_url, *auth, *args, *extra)
        started.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


class ReferenceRegistry:
    """The CNCF reference registry (Debian's ``docker-registry``), filesystem storage, no auth."""

    ready_status = 200  # what GET /v2/ answers once it serves (a subclass with auth: 401)

    def __init__(self, root: Path) -> None:
        exe = shutil.which("docker-registry")
        if not exe:
            raise RuntimeError("docker-registry is not installed: run scripts/test (it installs it)")
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.yml"
        self.config.write_text(
            "version: 0.1\nlog: {level: warn, accesslog: {disabled: true}}\n"
            f"storage:\n  filesystem: {{rootdirectory: {root / 'data'}}}\n  delete: {{enabled: true}}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: tests\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.exe = exe

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Self:
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        with open(self.root / "log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "serve", str(self.config)], stdout=log, stderr=subprocess.STDOUT, env=env
            )

        def ready() -> bool:
            try:
                return httpx.get(self.url + "/v2/", timeout=1).status_code == self.ready_status
            except httpx.TransportError:
                return False

        wait_until(ready, 30, f"{type(self).__name__} to start")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None


class RuntimeProcess:
    """``hangar serve`` in a subprocess, over a given HANGAR_HOME (its store)."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.port = free_port()
        self.env = {**os.environ, "HANGAR_HOME": str(home), "HANGAR_HOST": f"127.0.0.1:{self.port}", **env}
        self.env.pop("HANGAR_MODELS", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RuntimeProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--log-level", "warning"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"hangar serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                return httpx.get(self.url + "/", timeout=1).status_code in (200, 401)
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "hangar serve to start")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
