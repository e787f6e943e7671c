from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.store import Store
from tests.people import Person, unique
from tests.servers import PostgresCluster, ReferenceRegistry, RegistryProcess, RuntimeProcess, registries

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def database_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``make(backend) -> database URL`` (empty for SQLite, which lives in the data dir)."""

    def make(backend: str) -> str:
        if backend == "sqlite":
            return ""
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        return cluster.create_database()

    return make


@pytest.fixture(scope="session", params=BACKENDS)
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, database_factory
) -> Iterator[RegistryProcess]:  # type: ignore[no-untyped-def]
    """One long-running registry per metadata backend, shared by the tests (each uses its own
    repository names)."""
    backend = request.param
    data = tmp_path_factory.mktemp(f"registry-{backend}") / "data"
    # The OCI API tests run without authentication; tests/auth covers it.
    proc = RegistryProcess(data, database_factory(backend), "--auth", "off")
    proc.backend = backend  # type: ignore[attr-defined]
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(params=BACKENDS)
def make_registry(request: pytest.FixtureRequest, tmp_path: Path, database_factory) -> Iterator:  # type: ignore[no-untyped-def]
    """A factory for registries a test may restart or kill (one database per test); without
    authentication unless the test passes ``--auth required``."""
    with registries(lambda n: tmp_path / f"data{n}", database_factory(request.param)) as make:
        yield make


@pytest.fixture
def client(registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry.url, timeout=60) as c:
        yield c


@pytest.fixture
def repo() -> str:
    """A repository name no other test uses."""
    return f"t{uuid.uuid4().hex[:8]}/model"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def auth_registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, database_factory
) -> Iterator[RegistryProcess]:  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp(f"auth-{request.param}") / "data"
    proc = RegistryProcess(data, database_factory(request.param), "--auth", "required", "--signup", "open")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def people(auth_registry: RegistryProcess, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``people("alice")`` makes a signed-up person with a unique name starting with alice."""

    def make(prefix: str, *, signup: bool = True) -> Person:
        person = Person(auth_registry, tmp_path / unique(prefix), unique(prefix))
        return person.signup() if signup else person

    return make


@pytest.fixture(scope="session")
def reference_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceRegistry]:
    proc = ReferenceRegistry(tmp_path_factory.mktemp("reference")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The GGUF files the runtime tests use, made once."""
    from tests.tinymodels import CHAT_TEMPLATE, write_tiny_llama, write_tiny_projector

    d = tmp_path_factory.mktemp("gguf")
    return {
        "chat": write_tiny_llama(d / "chat.gguf", chat_template=CHAT_TEMPLATE, seed=0),
        "plain": write_tiny_llama(d / "plain.gguf", seed=1),
        "embed": write_tiny_llama(d / "embed.gguf", embedding=True, seed=2, name="tiny-embed"),
        "long": write_tiny_llama(d / "long.gguf", context=16384, seed=3),
        "projector": write_tiny_projector(d / "mmproj.gguf", text_dim=64),
    }


def populate(home: Path, ggufs: dict[str, Path]) -> Store:
    """A store with the runtime tests' models (see tests/tinymodels.py for their shapes)."""
    from client.config import load
    from client.store import Store
    from tests.tinymodels import CHATML_TOOLS_TEMPLATE, add_model

    store = Store(load({"HANGAR_HOME": str(home)}).models)
    add_model(store, "tiny", ggufs["chat"], params={"num_ctx": 512})
    add_model(
        store,
        "tiny-go",
        ggufs["plain"],
        template="{{- if .System }}<|system|>{{ .System }}<|end|>{{ end }}"
        '{{- range .Messages }}{{ if ne .Role "system" }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}{{ end }}'
        "<|assistant|>",
        system="You are a test model.",
        params={"temperature": 0.1, "stop": ["<|end|>"], "num_ctx": 512},
        messages=[{"role": "user", "content": "seed question"}, {"role": "assistant", "content": "seed answer"}],
        license="Test License 1.0",
    )
    add_model(store, "tiny-tools", ggufs["plain"], template=CHATML_TOOLS_TEMPLATE, params={"num_ctx": 512})
    add_model(
        store,
        "tiny-legacy",
        ggufs["plain"],
        template="{{ if .System }}S:{{ .System }} {{ end }}U:{{ .Prompt }} A:{{ .Response }}<end>",
    )
    add_model(store, "tiny-embed", ggufs["embed"])
    add_model(store, "tiny-greedy", ggufs["chat"], params={"num_ctx": 512, "temperature": 0, "num_predict": 12})
    add_model(
        store,
        "tiny-vision",
        ggufs["chat"],
        params={"num_ctx": 512, "temperature": 0, "num_predict": 6},
        projector=ggufs["projector"],
    )
    add_model(store, "tiny-long", ggufs["long"], params={"num_ctx": 16384})
    return store


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Iterator[RuntimeProcess]:
    """One ``hangar serve`` for the API tests, with the tiny models in its store."""
    home = tmp_path_factory.mktemp("runtime-home")
    populate(home, tiny_models)
    proc = RuntimeProcess(home).start()
    yield proc
    proc.stop()
