"""The kill -9 soak: a registry and its clients killed at random points of pushes, pulls and GC
runs, restarted, the operation run again; after every iteration each pushed or pulled model must be
whole (its blobs' digests), ``hangar registry fsck --full`` and ``hangar fsck`` must find no fault.

``scripts/soak.sh`` runs it (``--iterations`` each kind, ``--seed`` to repeat a run, ``--report``
for a JSON summary); ``tests/reliability/test_soak.py`` runs a few iterations in the test suite.
The seed is printed first, so a failure can be replayed."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from client.config import load
from client.store import Store
from client.store_ops import remove_models
from formats.names import ModelName
from tests.client.conftest import make_model
from tests.servers import REPO_ROOT, RegistryProcess

KINDS = ("registry-push", "registry-pull", "client-push", "client-pull", "gc")
RATE = "6MB"  # slow enough that a kill lands mid-transfer


@dataclass
class Outcome:
    kind: str
    iterations: int = 0
    killed_mid_operation: int = 0  # the kill came while the operation was still running
    recovered_alone: int = 0  # the client finished despite a registry kill (its own retries)
    resumed: int = 0  # the operation failed, and its second run finished it
    lost: int = 0  # anything wrong afterwards: a failed second run, a damaged model, an fsck fault
    failures: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, root: Path, seed: int, database_url: str = "", say=print) -> None:  # type: ignore[no-untyped-def]
        self.root = root
        self.random = random.Random(seed)
        self.say = say
        self.registry = RegistryProcess(root / "registry", database_url, "--auth", "off")
        self.source_home = root / "source"
        self.source = Store(load({"HANGAR_HOME": str(self.source_home)}).models).ensure()
        self.count = 0

    # -- processes ---------------------------------------------------------------------------

    def hangar(self, home: Path, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env={**os.environ, "HANGAR_HOME": str(home)}, cwd=REPO_ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip

    def run(self, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.hangar(home, *args)
        out, err = proc.communicate(timeout=600)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def registry_command(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "cli", "registry", *args, "--data-dir", str(self.registry.data_dir)]
        if self.registry.database_url:
            cmd += ["--database-url", self.registry.database_url]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)

    # -- models ------------------------------------------------------------------------------

    def new_model(self) -> ModelName:
        self.count += 1
        size = self.random.randrange(8_000_000, 24_000_000)
        data = self.random.randbytes(size)
        return make_model(self.source, f"{self.registry.host}/soak/m{self.count}:v1", data)

    def whole(self, store: Store, name: ModelName) -> str | None:
        """Why ``name`` in ``store`` is not the source's model, or None."""
        try:
            model = store.get(name)
        except Exception as e:
            return f"{name.display()} unreadable: {e}"
        if model.manifest.raw != self.source.get(name).manifest.raw:
            return f"{name.display()}: another manifest"
        for desc in model.manifest.blobs():
            path = store.blob_path(desc.digest)
            if not path.exists():
                return f"{name.display()}: {desc.digest} missing"
            if desc.digest.of_file(path) != desc.digest:
                return f"{name.display()}: {desc.digest} damaged"
        return None

    def in_registry(self, name: ModelName) -> str | None:
        """Pull ``name`` into a fresh store and check it: what the registry holds is whole."""
        home = Path(tempfile.mkdtemp(dir=self.root, prefix="check-"))
        try:
            done = self.run(home, "pull", str(name))
            if done.returncode != 0:
                return f"pull of {name.display()} after the soak: {done.stderr.strip()[-300:]}"
            return self.whole(Store(load({"HANGAR_HOME": str(home)}).models), name)
        finally:
            shutil.rmtree(home, ignore_errors=True)

    # -- one iteration -----------------------------------------------------------------------

    def iteration(self, kind: str, outcome: Outcome) -> None:
        outcome.iterations += 1
        delay = self.random.uniform(0.3, 4.0)
        name = self.new_model()
        pull_home = Path(tempfile.mkdtemp(dir=self.root, prefix="pull-"))
        try:
            if kind.endswith("pull") or kind == "gc":
                seeded = self.run(self.source_home, "push", str(name))
                if seeded.returncode != 0:
                    raise RuntimeError(f"setting up the pull: {seeded.stderr.strip()[-300:]}")
            home, args = (
                (self.source_home, ("push", str(name), "--max-rate", RATE))
                if kind.endswith("push")
                else (pull_home, ("pull", str(name), "--max-rate", RATE))
            )
            proc = self.hangar(home, *args)
            gc = None
            if kind == "gc":
                gc = subprocess.Popen(
                    [sys.executable, "-m", "cli", "registry", "gc", "--grace", "0s", "--upload-max-age", "1s",
                     "--data-dir", str(self.registry.data_dir),
                     *(["--database-url", self.registry.database_url] if self.registry.database_url else [])],
                    cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            time.sleep(delay)
            if kind.startswith("registry"):
                outcome.killed_mid_operation += proc.poll() is None
                self.registry.kill()
                self.registry.start()
            elif kind.startswith("client"):
                outcome.killed_mid_operation += proc.poll() is None
                with_suppressed(lambda: os.killpg(proc.pid, signal.SIGKILL))
            elif gc is not None:
                outcome.killed_mid_operation += gc.poll() is None
                with_suppressed(lambda: os.killpg(gc.pid, signal.SIGKILL))
                gc.wait(60)
            proc.communicate(timeout=600)
            if proc.returncode == 0:
                outcome.recovered_alone += kind.startswith("registry")
            else:
                again = self.run(home, *args)
                if again.returncode != 0:
                    raise RuntimeError(f"{kind}: the second run failed: {again.stderr.strip()[-400:]}")
                outcome.resumed += 1
            problems = [self.in_registry(name)]
            if kind.endswith("pull") or kind == "gc":
                problems.append(self.whole(Store(load({"HANGAR_HOME": str(pull_home)}).models), name))
            problems += self.fsck_faults(pull_home)
            if problems := [p for p in problems if p]:
                raise RuntimeError("; ".join(problems))
        except Exception as e:  # counted, and the soak goes on
            outcome.lost += 1
            outcome.failures.append(f"{kind} #{outcome.iterations}: {e}")
            self.say(f"LOST {kind} #{outcome.iterations}: {e}")
            if self.registry.proc is None or self.registry.proc.poll() is not None:
                self.registry.start()
        finally:
            shutil.rmtree(pull_home, ignore_errors=True)
            self.forget(name)

    def forget(self, name: ModelName) -> None:
        """Remove the iteration's model everywhere (and GC the registry), so that every fsck
        checks what this iteration did, in a time that does not grow with the iterations."""
        with contextlib.suppress(Exception):
            digest = self.source.get(name).manifest.digest
            remove_models(self.source, [name])
            httpx.delete(f"{self.registry.url}/v2/{name.namespace}/{name.model}/manifests/{digest}", timeout=30)
            self.registry_command("gc", "--grace", "0s")

    def fsck_faults(self, pull_home: Path) -> list[str]:
        faults = []
        checked = self.registry_command("fsck", "--full")
        if checked.returncode != 0:
            faults.append("registry fsck: " + " | ".join(checked.stdout.splitlines()[1:]))
        for home in (self.source_home, pull_home):
            local = self.run(home, "fsck")
            if local.returncode != 0:
                faults.append(f"hangar fsck of {home.name}: " + " | ".join(local.stdout.splitlines()))
        return faults

    def soak(self, iterations: int, kinds: tuple[str, ...] = KINDS) -> list[Outcome]:
        self.registry.start()
        outcomes = {kind: Outcome(kind) for kind in kinds}
        try:
            plan = [kind for kind in kinds for _ in range(iterations)]
            self.random.shuffle(plan)
            for i, kind in enumerate(plan, 1):
                start = time.monotonic()
                self.iteration(kind, outcomes[kind])
                self.say(f"[{i}/{len(plan)}] {kind}: {time.monotonic() - start:.1f} s")
        finally:
            self.registry.stop()
        return list(outcomes.values())


def with_suppressed(action) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(ProcessLookupError):  # it had already finished
        action()


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| fault | iterations | killed mid-operation | finished alone | resumed | lost |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "registry-push": "registry kill -9 during a push",
        "registry-pull": "registry kill -9 during a pull",
        "client-push": "client kill -9 during a push",
        "client-pull": "client kill -9 during a pull",
        "gc": "kill -9 of `hangar registry gc` (grace 0) during a pull",
    }
    for o in outcomes:
        rows.append(f"| {names.get(o.kind, o.kind)} | {o.iterations} | {o.killed_mid_operation} | "
                    f"{o.recovered_alone} | {o.resumed} | {o.lost} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=3, help="iterations of each kind of fault (default 3)")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in the data dir)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--report", type=Path, help="write the outcomes as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"soak seed {seed}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="hangar-soak-"))
    started = time.monotonic()
    try:
        soak = Soak(root, seed, args.database_url, say=lambda line: print(line, flush=True))
        outcomes = soak.soak(args.iterations, tuple(k for k in args.kinds.split(",") if k))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(table(outcomes))
    print(f"seed {seed}, {time.monotonic() - started:.0f} s")
    if args.report:
        doc = {"seed": seed, "seconds": round(time.monotonic() - started), "outcomes": [o.__dict__ for o in outcomes]}
        args.report.write_text(json.dumps(doc, indent=2))
    return 1 if any(o.lost for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
