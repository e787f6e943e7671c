"""The kill -9 soak: a registry, its tools and its clients killed at random points of pushes, pulls,
manifest writes, GC runs, migrations, creates, removals and prunes; restarted, the operation run
again; after every iteration each model must be whole (its blobs' digests), every tag must name the
manifest it had before or the one being written, ``hangar registry fsck --full`` and ``hangar fsck``
must find no fault.

``scripts/soak.sh`` runs it (``--iterations`` each kind, ``--seed`` to repeat a run, ``--report``
for a JSON summary); ``tests/reliability/test_soak.py`` runs one iteration of each kind at a small
scale in the test suite. The seed is printed first, so a failure can be replayed."""

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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from client.config import load
from client.store import Store
from client.store_ops import remove_models
from formats import mediatypes as mt
from formats.digest import Digest
from formats.names import ModelName
from registry.storage import open_store
from tests.client.conftest import make_model
from tests.helpers import ollama_manifest, push_blob
from tests.reliability import oldschema
from tests.servers import REPO_ROOT, RegistryProcess, free_port

KINDS = ("registry-push", "registry-pull", "client-push", "client-pull", "gc", "manifest-write", "migration",
         "client-create", "client-rm", "client-prune")  # fmt: skip
RATE = 6_000_000  # bytes a second: slow enough that a kill lands mid-transfer

NAMES = {
    "registry-push": "registry kill -9 during a push",
    "registry-pull": "registry kill -9 during a pull",
    "client-push": "client kill -9 during a push",
    "client-pull": "client kill -9 during a pull",
    "gc": "kill -9 of `hangar registry gc` (grace 0) while it deletes, during a pull",
    "manifest-write": "registry kill -9 during manifest PUTs",
    "migration": f"kill -9 of `hangar registry migrate` (from revision {oldschema.OLD_REVISION})",
    "client-create": "client kill -9 during `hangar create`",
    "client-rm": "client kill -9 during `hangar rm`",
    "client-prune": "client kill -9 during `hangar prune`",
}


@dataclass(frozen=True)
class Scale:
    """How much each iteration moves: the soak's defaults, or :data:`SMALL` for the test suite."""

    model_bytes: tuple[int, int] = (8_000_000, 24_000_000)  # a pushed or pulled model's weights
    orphans: int = 100  # unreferenced blobs that gc deletes while it is killed
    manifest_writes: tuple[int, int] = (4, 12)  # repositories, tags in each, rewritten by manifest PUTs
    old_repositories: int = 1000  # models in the old-schema database that the migration upgrades
    removed_models: int = 30  # models given to one `hangar rm`
    unused_blobs: int = 2000  # blobs `hangar prune` deletes
    gguf_dim: int = 768  # the GGUF that `hangar create` imports: 4 layers of this width (~94 MB)
    # gc after each iteration, so that fsck --full's time does not grow with the iterations (a
    # run of one iteration a kind has nothing to gain from it)
    collect: bool = True


FULL = Scale()
SMALL = Scale(model_bytes=(2_000_000, 5_000_000), orphans=40, manifest_writes=(3, 5), old_repositories=200,
              removed_models=4, unused_blobs=60, gguf_dim=256, collect=False)  # fmt: skip


@dataclass
class Outcome:
    kind: str
    iterations: int = 0
    killed_mid_operation: int = 0  # the kill came while the operation was still running
    half_done: int = 0  # the kill left some of the operation's effects and not others
    recovered_alone: int = 0  # the client finished despite a registry kill (its own retries)
    resumed: int = 0  # the operation failed or was cut, and its second run finished it
    lost: int = 0  # anything wrong afterwards: a failed second run, a damaged model, an fsck fault
    fsck_faults: int = 0  # iterations after which an fsck found a fault (counted in lost too)
    leftovers: int = 0  # crash leftovers found after the second run (stray bytes, unused blobs)
    failures: list[str] = field(default_factory=list)


class Lost(Exception):
    """Something the iteration should have kept is wrong."""


class Soak:
    def __init__(  # type: ignore[no-untyped-def]
        self, root: Path, seed: int, database_url: str = "", say=print, scale: Scale = FULL, workers: int = 1
    ) -> None:
        self.root = root
        self.seed = seed
        self.random = random.Random(seed)
        self.say = say
        self.scale = scale
        # Several workers: a kill -9 of the process group takes them all, each mid-request.
        self.registry = RegistryProcess(root / "registry", database_url, "--auth", "off", "--workers", str(workers))
        self.source_home = root / "source"
        self.source = Store(load({"HANGAR_HOME": str(self.source_home)}).models).ensure()
        self.no_runtime = f"127.0.0.1:{free_port()}"  # `hangar create` works locally: no `hangar serve` there
        self.count = 0
        self._old: tuple[oldschema.OldRegistry, float] | None = None
        self._gguf: tuple[Path, Digest, int] | None = None

    # -- processes ---------------------------------------------------------------------------

    def hangar(self, home: Path, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env={**os.environ, "HANGAR_HOME": str(home), "HANGAR_HOST": self.no_runtime}, cwd=REPO_ROOT,
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip

    def run(self, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.hangar(home, *args)
        out, err = proc.communicate(timeout=600)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def registry_args(self, *args: str, data_dir: Path | None = None, database_url: str = "") -> list[str]:
        """``hangar registry ARGS`` on the soak's registry, or on ``data_dir`` (with SQLite there
        unless ``database_url`` is given)."""
        if data_dir is None:
            data_dir, database_url = self.registry.data_dir, self.registry.database_url
        cmd = [sys.executable, "-m", "cli", "registry", *args, "--data-dir", str(data_dir)]
        return cmd + (["--database-url", database_url] if database_url else [])

    def registry_command(
        self, *args: str, data_dir: Path | None = None, database_url: str = ""
    ) -> subprocess.CompletedProcess[str]:
        cmd = self.registry_args(*args, data_dir=data_dir, database_url=database_url)
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)

    def registry_popen(
        self, *args: str, data_dir: Path | None = None, database_url: str = ""
    ) -> subprocess.Popen[bytes]:
        cmd = self.registry_args(*args, data_dir=data_dir, database_url=database_url)
        return subprocess.Popen(cmd, cwd=REPO_ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def kill_when(self, proc: subprocess.Popen[str] | subprocess.Popen[bytes], progress: Callable[[], float]) -> bool:
        """SIGKILL ``proc``'s process group once ``progress()`` (0 before the work, 1 when it is all
        done) passes a random fraction, so that the kill lands inside the work rather than in the
        command's start-up. Whether it was still running when killed."""
        target = self.random.random()
        while proc.poll() is None and progress() <= target:
            time.sleep(0.001)
        running = proc.poll() is None
        with contextlib.suppress(ProcessLookupError):  # it had already finished
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
        return running

    # -- models ------------------------------------------------------------------------------

    def new_model(self) -> ModelName:
        self.count += 1
        size = self.random.randrange(*self.scale.model_bytes)
        data = self.random.randbytes(size)
        return make_model(self.source, f"{self.registry.host}/soak/m{self.count}:v1", data)

    def whole(self, store: Store, name: ModelName) -> str | None:
        """Why ``name`` in ``store`` is not the source's model, or None."""
        try:
            if store.get(name).manifest.raw != self.source.get(name).manifest.raw:
                return f"{name.display()}: another manifest"
        except Exception as e:
            return f"{name.display()} unreadable: {e}"
        return intact(store, name)

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

    def registry_blob(self, digest: str) -> Path:
        """Where the registry's filesystem store keeps a blob's bytes."""
        backend = open_store(self.registry.data_dir).backend
        return backend.blob_path(Digest.parse(digest))  # type: ignore[attr-defined,no-any-return]

    # -- one iteration -----------------------------------------------------------------------

    def iteration(self, kind: str, outcome: Outcome) -> None:
        outcome.iterations += 1
        work_home = Path(tempfile.mkdtemp(dir=self.root, prefix="home-"))
        try:
            run = {
                "gc": self.gc, "manifest-write": self.manifest_write, "migration": self.migration,
                "client-create": self.create, "client-rm": self.rm, "client-prune": self.prune,
            }.get(kind, self.transfer)  # fmt: skip
            run(kind, outcome, work_home)
        except Exception as e:  # counted, and the soak goes on
            outcome.lost += 1
            outcome.failures.append(f"{kind} #{outcome.iterations}: {e}")
            self.say(f"LOST {kind} #{outcome.iterations}: {e}")
            if self.registry.proc is None or self.registry.proc.poll() is not None:
                self.registry.start()
            # So that the next iterations are judged on what they do, not on this one's faults.
            repaired = self.registry_command("fsck", "--repair", "--grace", "0s")
            self.say(f"  fsck --repair after it: {(repaired.stdout.strip().splitlines() or [''])[-1]}")
        finally:
            shutil.rmtree(work_home, ignore_errors=True)

    def check(
        self, outcome: Outcome, problems: list[str | None], homes: tuple[Path, ...] = (), registry: bool = True
    ) -> None:
        """Raise Lost with every problem found, after the fscks of the registry (unless the
        iteration did not touch it) and of the stores in ``homes``."""
        faults = self.fsck_faults(homes, registry)
        outcome.fsck_faults += bool(faults)
        if found := [p for p in [*problems, *faults] if p]:
            raise Lost("; ".join(found))

    def transfer(self, kind: str, outcome: Outcome, pull_home: Path) -> None:
        """A push or a pull, and the registry or the client killed at a random point of it."""
        name = self.new_model()
        try:
            if kind.endswith("pull"):
                self.seed_registry(name)
            home, args = (
                (self.source_home, ("push", str(name), "--max-rate", str(RATE)))
                if kind.endswith("push")
                else (pull_home, ("pull", str(name), "--max-rate", str(RATE)))
            )
            size = max(d.size for d in self.source.get(name).manifest.blobs())
            proc = self.hangar(home, *args)
            time.sleep(self.random.uniform(0.2, 0.2 + size / RATE))  # over the transfer's expected time
            outcome.killed_mid_operation += proc.poll() is None
            if kind.startswith("registry"):
                self.registry.kill()
                self.registry.start()
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=600)
            if proc.returncode == 0:
                outcome.recovered_alone += kind.startswith("registry")
            else:
                self.again(home, *args)
                outcome.resumed += 1
            problems = [self.in_registry(name)]
            if kind.endswith("pull"):
                problems.append(self.whole(Store(load({"HANGAR_HOME": str(pull_home)}).models), name))
            self.check(outcome, problems, (self.source_home, pull_home))
        finally:
            self.forget(name)

    def again(self, home: Path, *args: str) -> None:
        again = self.run(home, *args)
        if again.returncode != 0:
            raise Lost(f"hangar {args[0]}: the second run failed: {again.stderr.strip()[-400:]}")

    def seed_registry(self, name: ModelName) -> None:
        seeded = self.run(self.source_home, "push", str(name))
        if seeded.returncode != 0:
            raise RuntimeError(f"setting up: {seeded.stderr.strip()[-300:]}")

    # -- the registry's own writes -----------------------------------------------------------

    def gc(self, kind: str, outcome: Outcome, pull_home: Path) -> None:
        """``hangar registry gc --grace 0s`` killed while it deletes a few hundred orphaned blobs
        (pushed, then unlinked), beside a pull of a model that it must not touch."""
        name = self.new_model()
        try:
            self.seed_registry(name)
            orphans = self.orphans()
            paths = [self.registry_blob(d) for d in orphans]
            pull = self.hangar(pull_home, "pull", str(name), "--max-rate", str(RATE))
            gc = self.registry_popen("gc", "--grace", "0s", "--upload-max-age", "1s")
            outcome.killed_mid_operation += self.kill_when(gc, lambda: gone(paths))
            outcome.half_done += 0 < gone(paths) < 1
            pull.communicate(timeout=600)
            if pull.returncode != 0:
                raise Lost(f"the pull beside gc failed: {pull.stderr.strip()[-300:]}")
            again = self.registry_command("gc", "--grace", "0s")
            if again.returncode != 0:
                raise Lost(f"gc run again failed: {again.stderr.strip()[-300:]}")
            outcome.resumed += 1
            # Orphans' bytes still there after the second run: what the kill left for
            # `fsck --repair` (fsck names them stray-blob, a leftover rather than a fault).
            outcome.leftovers += sum(p.exists() for p in paths)
            problems = [self.in_registry(name), self.whole(Store(load({"HANGAR_HOME": str(pull_home)}).models), name)]
            self.check(outcome, problems, (self.source_home, pull_home))
        finally:
            self.forget(name)

    def orphans(self) -> list[str]:
        """Blobs with no manifest and no repository link: what gc deletes."""
        repo = f"soak/orphans{self.count}"
        with httpx.Client(base_url=self.registry.url, timeout=60) as client:
            digests = [push_blob(client, repo, self.random.randbytes(self.random.randrange(1024, 32768)))["digest"]
                       for _ in range(self.scale.orphans)]  # fmt: skip
            for digest in digests:
                client.delete(f"/v2/{repo}/blobs/{digest}").raise_for_status()
        return digests

    def manifest_write(self, kind: str, outcome: Outcome, _home: Path) -> None:
        """Manifest PUTs rewriting many tags of several repositories, the registry killed at a
        random moment among them: afterwards every tag names its old manifest or its new one (the
        new one if its PUT was answered), never nothing; the PUTs not answered succeed when sent
        again."""
        self.count += 1
        repos, tags = self.scale.manifest_writes
        names = [f"soak/w{self.count}-{r}" for r in range(repos)]
        with httpx.Client(base_url=self.registry.url, timeout=60) as client:
            config = push_blob(client, names[0], json.dumps({"model_format": "gguf"}).encode())
            weights = push_blob(client, names[0], self.random.randbytes(100_000))
            blobs = [config, weights]
            for name in names[1:]:
                for blob in blobs:
                    mounted = client.post(
                        f"/v2/{name}/blobs/uploads/", params={"mount": blob["digest"], "from": names[0]}
                    )
                    mounted.raise_for_status()

            def manifest(name: str, tag: str, version: str) -> bytes:
                doc = json.loads(ollama_manifest(config, [{"mediaType": mt.OLLAMA_MODEL, **weights}]))
                doc["annotations"] = {"org.hangar.soak": f"{name}:{tag} {version}"}
                return json.dumps(doc).encode()

            keys = [(name, f"t{i}") for name in names for i in range(tags)]
            old = {k: manifest(*k, "old") for k in keys}
            new = {k: manifest(*k, "new") for k in keys}
            started = time.monotonic()
            for key in keys:
                put_manifest(client, key, old[key]).raise_for_status()
            per_put = (time.monotonic() - started) / len(keys)
        self.random.shuffle(keys)
        answered: list[tuple[str, str]] = []
        refused: list[str] = []  # answers other than 201 (a kill cuts connections; it answers nothing)

        def writer() -> None:
            with httpx.Client(base_url=self.registry.url, timeout=60) as client:
                for key in keys:
                    try:
                        r = put_manifest(client, key, new[key])
                    except httpx.TransportError:
                        return
                    if r.status_code != 201:
                        refused.append(f"{key[0]}:{key[1]}: PUT answered {r.status_code} {r.text[:200]}")
                        return
                    answered.append(key)

        thread = threading.Thread(target=writer)
        thread.start()
        target = self.random.randrange(len(keys))
        while thread.is_alive() and len(answered) < target:
            time.sleep(0.001)
        time.sleep(self.random.uniform(0, per_put))  # into the next PUT
        outcome.killed_mid_operation += thread.is_alive()
        self.registry.kill()
        thread.join()
        self.registry.start()
        try:
            digests = {k: str(Digest.of_bytes(v)) for k, v in new.items()}
            olds = {k: str(Digest.of_bytes(v)) for k, v in old.items()}
            problems: list[str | None] = list(refused)
            with httpx.Client(base_url=self.registry.url, timeout=60) as client:
                seen = {k: tag_digest(client, k) for k in keys}
                for k in keys:
                    if k in answered and seen[k] != digests[k]:
                        problems.append(f"{k[0]}:{k[1]} answered 201 but names {seen[k]}")
                    elif seen[k] not in (digests[k], olds[k]):
                        problems.append(f"{k[0]}:{k[1]} names {seen[k]}, neither its old nor its new manifest")
                rewritten = sum(seen[k] == digests[k] for k in keys)
                outcome.half_done += 0 < rewritten < len(keys)
                for k in keys:
                    if seen[k] != digests[k] and put_manifest(client, k, new[k]).status_code != 201:
                        problems.append(f"{k[0]}:{k[1]}: the PUT sent again failed")
                outcome.resumed += rewritten < len(keys)
                problems += [f"{k[0]}:{k[1]} not rewritten" for k in keys if tag_digest(client, k) != digests[k]]
            self.check(outcome, problems)
        finally:
            with contextlib.suppress(Exception), httpx.Client(base_url=self.registry.url, timeout=60) as client:
                for name, tag in old:
                    for raw in (old[(name, tag)], new[(name, tag)]):
                        client.delete(f"/v2/{name}/manifests/{Digest.of_bytes(raw)}")
                for name in names:
                    for blob in blobs:
                        client.delete(f"/v2/{name}/blobs/{blob['digest']}")
            if self.scale.collect:
                self.registry_command("gc", "--grace", "0s")

    def migration(self, kind: str, outcome: Outcome, _home: Path) -> None:
        """``hangar registry migrate`` of a copy of a populated old-schema database killed at a
        random moment of its run, then run again: it completes, every tag still names its
        manifest, every model has its summary, and ``fsck --full`` is clean."""
        old, seconds = self.old_registry()
        self.count += 1
        data_dir = self.root / f"migrate{self.count}"
        url = oldschema.copy(old, data_dir, f"{old_database(old)}_{self.count}")
        target = oldschema.url_of(data_dir, url)
        try:
            migrate = Migrate(self.registry_args("migrate", data_dir=data_dir, database_url=url))
            migrate.started.wait(600)
            time.sleep(self.random.uniform(0, seconds))  # within the migrations' measured time
            outcome.killed_mid_operation += migrate.proc.poll() is None
            migrate.kill()
            head = oldschema.head_revision()
            reached = oldschema.revision(target)
            outcome.half_done += reached not in (oldschema.OLD_REVISION, head)
            if reached != head:
                again = self.registry_command("migrate", data_dir=data_dir, database_url=url)
                if again.returncode != 0:
                    raise Lost(f"migrate run again failed: {again.stderr.strip()[-400:]}")
                outcome.resumed += 1
            problems: list[str | None] = []
            if oldschema.revision(target) != head:
                problems.append(f"at revision {oldschema.revision(target)}, not {head}")
            if oldschema.tags(target) != old.tags:
                problems.append("the tags differ from the old database's")
            if oldschema.summaries(target) != old.repositories:
                problems.append(f"{oldschema.summaries(target)} model summaries for {old.repositories} models")
            checked = self.registry_command("fsck", "--full", data_dir=data_dir, database_url=url)
            outcome.fsck_faults += checked.returncode != 0
            if checked.returncode != 0:
                problems.append("fsck: " + " | ".join(checked.stdout.splitlines()[1:]))
            if found := [p for p in problems if p]:
                raise Lost("; ".join(found))
        finally:
            oldschema.drop(data_dir, url)

    def old_registry(self) -> tuple[oldschema.OldRegistry, float]:
        """The old-schema registry (made once: SQLite, or a new database beside the soak's
        PostgreSQL one), and how long one migrate of a copy takes."""
        if self._old is None:
            url = self.registry.database_url
            if url:
                url = make_url(url).set(database=f"hangar_soak_old_{os.getpid()}").render_as_string(False)
            old = oldschema.build(self.root / "old-schema", self.scale.old_repositories, self.seed, url)
            rehearsal = self.root / "migrate-rehearsal"
            copied = oldschema.copy(old, rehearsal, f"{old_database(old)}_rehearsal")
            done = Migrate(self.registry_args("migrate", data_dir=rehearsal, database_url=copied))
            done.proc.wait(600)
            done.started.wait(60)
            # The migrations' time: from the first one's start to the last one's, and one more
            # average step for the last (the process's exit after it is not theirs).
            steps = done.upgrades
            seconds = (steps[-1] - steps[0]) * len(steps) / max(len(steps) - 1, 1) if steps else 0.0
            if done.proc.returncode != 0 or oldschema.tags(oldschema.url_of(rehearsal, copied)) != old.tags:
                raise RuntimeError(f"setting up: the old schema does not migrate: {done.stderr()[-400:]}")
            oldschema.drop(rehearsal, copied)
            self.say(f"old-schema database: {old.repositories} models; its migrations take {seconds:.1f} s")
            self._old = (old, seconds)
        return self._old

    # -- the client's own writes -------------------------------------------------------------

    def create(self, kind: str, outcome: Outcome, home: Path) -> None:
        """``hangar create`` FROM a GGUF killed while it copies the file in or writes the manifest:
        `hangar list` shows the model whole or not at all, and the second run makes it."""
        gguf, digest, size = self.gguf()
        self.count += 1
        modelfile = gguf.parent / f"Modelfile{self.count}"
        modelfile.write_text(f"FROM ./{gguf.name}\nSYSTEM soak {self.count}\n")
        store = Store(load({"HANGAR_HOME": str(home)}).models)
        name = f"soak/c{self.count}"
        args = ("create", name, "-f", str(modelfile))

        def progress() -> float:
            if store.models():
                return 1.0
            if store.blob_path(digest).exists():
                return 0.9
            with contextlib.suppress(FileNotFoundError):
                return 0.9 * max((p.stat().st_size for p in store.tmp_dir.iterdir()), default=0) / size
            return 0.0

        proc = self.hangar(home, *args)
        outcome.killed_mid_operation += self.kill_when(proc, progress)
        listed = store.models()
        problems = [intact(store, m.name) for m in listed]
        if not listed:
            outcome.half_done += progress() > 0 or any(store.tmp_dir.glob("*"))
            self.again(home, *args)
            outcome.resumed += 1
            listed = store.models()
        if [d.digest for m in listed for d in m.manifest.layers if d.media_type == mt.OLLAMA_MODEL] != [digest]:
            problems.append(f"after the second run: {[m.name.display() for m in listed]}, not the model from {gguf}")
        problems += [intact(store, m.name) for m in listed]
        self.check(outcome, problems, (home,), registry=False)

    def gguf(self) -> tuple[Path, Digest, int]:
        """The GGUF file that ``create`` imports (written once)."""
        if self._gguf is None:
            from tests.tinymodels import write_tiny_llama

            (self.root / "create").mkdir(exist_ok=True)
            path = write_tiny_llama(self.root / "create" / "model.gguf", dim=self.scale.gguf_dim, layers=4)
            self._gguf = (path, Digest.of_file(path), path.stat().st_size)
        return self._gguf

    def rm(self, kind: str, outcome: Outcome, home: Path) -> None:
        """``hangar rm`` of several models killed while it deletes their manifests and blobs:
        each is listed whole or not at all, a second ``rm`` of those left succeeds, the model
        that shares a blob with them stays whole, and ``hangar prune`` takes what is left over."""
        store = Store(load({"HANGAR_HOME": str(home)}).models).ensure()
        self.count += 1
        keep = make_model(store, f"{self.registry.host}/soak/keep{self.count}:v1", self.random.randbytes(100_000))
        names = [make_model(store, f"{self.registry.host}/soak/rm{self.count}-{i}:v1",
                            self.random.randbytes(self.random.randrange(200_000, 1_000_000)))
                 for i in range(self.scale.removed_models)]  # fmt: skip
        kept = {d.digest for d in store.get(keep).manifest.blobs()}
        paths = [store.manifest_path(n) for n in names]
        paths += [
            store.blob_path(d.digest) for n in names for d in store.get(n).manifest.blobs() if d.digest not in kept
        ]
        proc = self.hangar(home, "rm", *map(str, names))
        outcome.killed_mid_operation += self.kill_when(proc, lambda: gone(paths))
        outcome.half_done += 0 < gone(paths) < 1
        problems = [intact(store, m.name) for m in store.models()]
        unfinished = gone(paths) < 1
        left = [n for n in names if store.manifest_path(n).exists()]
        if left:
            self.again(home, "rm", *map(str, left))
        outcome.resumed += unfinished
        problems += [f"{m.name.display()} still listed" for m in store.models() if m.name != keep]
        problems.append(intact(store, keep))
        outcome.leftovers += sum(p.exists() for p in paths)
        self.again(home, "prune", "--grace", "0s")
        problems += [f"{p.name} left after prune" for p in paths if p.exists()]
        self.check(outcome, problems, (home,), registry=False)

    def prune(self, kind: str, outcome: Outcome, home: Path) -> None:
        """``hangar prune --grace 0s`` killed while it deletes a few hundred unused blobs: the
        model in the store stays whole, and the second run deletes the rest."""
        store = Store(load({"HANGAR_HOME": str(home)}).models).ensure()
        self.count += 1
        keep = make_model(store, f"{self.registry.host}/soak/keep{self.count}:v1", self.random.randbytes(100_000))
        paths = []
        for _ in range(self.scale.unused_blobs):
            data = self.random.randbytes(self.random.randrange(1024, 32768))
            path = store.blob_path(Digest.of_bytes(data))
            path.write_bytes(data)
            paths.append(path)
        proc = self.hangar(home, "prune", "--grace", "0s")
        outcome.killed_mid_operation += self.kill_when(proc, lambda: gone(paths))
        outcome.half_done += 0 < gone(paths) < 1
        if gone(paths) < 1:
            self.again(home, "prune", "--grace", "0s")
            outcome.resumed += 1
        problems = [intact(store, keep), *(f"{p.name} left after prune" for p in paths if p.exists())]
        problems += [f"{m.name.display()} listed" for m in store.models() if m.name != keep]
        self.check(outcome, problems, (home,), registry=False)

    # -- between iterations ------------------------------------------------------------------

    def forget(self, name: ModelName) -> None:
        """Remove the iteration's model everywhere (its manifest, and its blobs' links, so that gc
        deletes them), so that every fsck checks what this iteration did, in a time that does not
        grow with the iterations."""
        with contextlib.suppress(Exception):
            manifest = self.source.get(name).manifest
            remove_models(self.source, [name])
            repo = f"{self.registry.url}/v2/{name.namespace}/{name.model}"
            httpx.delete(f"{repo}/manifests/{manifest.digest}", timeout=30)
            for desc in manifest.blobs():
                httpx.delete(f"{repo}/blobs/{desc.digest}", timeout=30)
            if self.scale.collect:
                self.registry_command("gc", "--grace", "0s")

    def fsck_faults(self, homes: tuple[Path, ...], registry: bool = True) -> list[str]:
        faults = []
        checked = self.registry_command("fsck", "--full") if registry else None
        if checked is not None and checked.returncode != 0:
            faults.append("registry fsck: " + " | ".join(checked.stdout.splitlines()[1:]))
        for home in homes:
            local = self.run(home, "fsck")
            if local.returncode != 0:
                faults.append(f"hangar fsck of {home.name}: " + " | ".join(local.stdout.splitlines()))
        return faults

    def soak(self, iterations: int, kinds: tuple[str, ...] = KINDS, minutes: float | None = None) -> list[Outcome]:
        """``iterations`` of each kind, in a random order; with ``minutes``, no iteration starts
        after that long (the outcomes count the iterations that ran)."""
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown kinds {', '.join(unknown)}; known: {', '.join(KINDS)}")
        self.registry.start()
        outcomes = {kind: Outcome(kind) for kind in kinds}
        started = time.monotonic()
        try:
            plan = [kind for kind in kinds for _ in range(iterations)]
            self.random.shuffle(plan)
            for i, kind in enumerate(plan, 1):
                start = time.monotonic()
                if minutes is not None and start - started > minutes * 60:
                    self.say(f"stopped after {minutes} minutes: {i - 1} of {len(plan)} iterations ran")
                    break
                self.iteration(kind, outcomes[kind])
                self.say(f"[{i}/{len(plan)}] {kind}: {time.monotonic() - start:.1f} s")
        finally:
            self.registry.stop()
        return list(outcomes.values())


class Migrate:
    """``hangar registry migrate`` with Alembic's log on (the command's own code, started from
    ``-c`` to turn logging on), so that the soak knows when the first migration begins: its kills
    land in the migrations rather than in the command's start-up."""

    LOGGED = "import logging, sys; logging.basicConfig(level=logging.INFO); from cli.main import main; sys.exit(main())"

    def __init__(self, args: list[str]) -> None:
        assert args[1:3] == ["-m", "cli"]
        self.proc = subprocess.Popen(
            [args[0], "-c", self.LOGGED, *args[3:]], cwd=REPO_ROOT, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        self.started = threading.Event()  # the first "Running upgrade" line, or the end
        self.lines: list[str] = []
        self.upgrades: list[float] = []  # when each "Running upgrade" line came
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "Running upgrade" in line:
                self.upgrades.append(time.monotonic())
                self.started.set()
        self.started.set()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # it had already finished
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)

    def stderr(self) -> str:
        return "".join(self.lines)


def put_manifest(client: httpx.Client, key: tuple[str, str], raw: bytes) -> httpx.Response:
    name, tag = key
    return client.put(f"/v2/{name}/manifests/{tag}", content=raw, headers={"Content-Type": mt.DOCKER_MANIFEST})


def tag_digest(client: httpx.Client, key: tuple[str, str]) -> str | None:
    """The digest of the manifest a tag names, or None when it names none."""
    name, tag = key
    r = client.head(f"/v2/{name}/manifests/{tag}", headers={"Accept": mt.DOCKER_MANIFEST})
    return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None


def intact(store: Store, name: ModelName) -> str | None:
    """Why the model ``name`` in ``store`` is not whole (a blob missing or not its digest), or None."""
    try:
        model = store.get(name)
    except Exception as e:
        return f"{name.display()} unreadable: {e}"
    for desc in model.manifest.blobs():
        path = store.blob_path(desc.digest)
        if not path.exists():
            return f"{name.display()}: {desc.digest} missing"
        if desc.digest.of_file(path) != desc.digest:
            return f"{name.display()}: {desc.digest} damaged"
    return None


def gone(paths: list[Path]) -> float:
    """The fraction of ``paths`` that no longer exist."""
    return sum(not p.exists() for p in paths) / len(paths)


def old_database(old: oldschema.OldRegistry) -> str:
    """A name for copies of the old registry's database (on SQLite, where it is unused, any)."""
    return str(make_url(old.database_url).database) if old.database_url else "sqlite"


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| fault | iterations | killed mid-operation | caught half-done | finished alone | resumed | lost "
        "| fsck faults |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        rows.append(f"| {NAMES.get(o.kind, o.kind)} | {o.iterations} | {o.killed_mid_operation} | {o.half_done} | "
                    f"{o.recovered_alone} | {o.resumed} | {o.lost} | {o.fsck_faults} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=3, help="iterations of each kind of fault (default 3)")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in the data dir)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--workers", type=int, default=1, help="the registry's worker processes (default 1)")
    parser.add_argument("--small", action="store_true", help="the test suite's small models and counts")
    parser.add_argument("--max-minutes", type=float, help="start no iteration after this long")
    parser.add_argument("--report", type=Path, help="write the outcomes as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"soak seed {seed}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="hangar-soak-"))
    started = time.monotonic()
    try:
        soak = Soak(root, seed, args.database_url, say=lambda line: print(line, flush=True),
                    scale=SMALL if args.small else Scale(), workers=args.workers)  # fmt: skip
        outcomes = soak.soak(args.iterations, tuple(k for k in args.kinds.split(",") if k), args.max_minutes)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(table(outcomes))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"seed {seed}, {time.monotonic() - started:.0f} s, load average {load} (1, 5, 15 min)")
    if args.report:
        doc = {"seed": seed, "seconds": round(time.monotonic() - started), "load": os.getloadavg(),
               "outcomes": [o.__dict__ for o in outcomes]}  # fmt: skip
        args.report.write_text(json.dumps(doc, indent=2))
    return 1 if any(o.lost for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
