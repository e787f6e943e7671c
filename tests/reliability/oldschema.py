"""A registry data directory at an old schema revision, populated with models: what the migration
soak (``tests/reliability/soak.py``, kind ``migration``) copies and upgrades while it kills
``hangar registry migrate``.

The rows are written with SQL against the old tables as reflected from the database (the registry's
own code speaks only the newest schema), and the blobs through the registry's storage, so the copy
is what a registry of that revision would hold: repositories, linked blobs, manifests with their
reference rows, tags. ``fsck`` finds nothing wrong in it once it is upgraded."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from formats import mediatypes as mt
from formats.digest import Digest
from formats.names import repository_key
from registry.db import alembic_config, make_engine, read_transaction, write_transaction
from registry.storage import open_store, put_blob
from tests.helpers import ollama_manifest

# The last revision before migration 0006, which fills model_summary from every tag: the upgrade
# from here has real work to do (0006's fill, 0007's tables, 0008's columns).
OLD_REVISION = "0005"


@dataclass
class OldRegistry:
    data_dir: Path  # its blobs (and, on SQLite, its database)
    database_url: str  # "" on SQLite
    repositories: int
    tags: dict[tuple[str, str], str]  # (repository, tag) -> manifest digest


def url_of(data_dir: Path, database_url: str) -> str:
    return database_url or f"sqlite:///{data_dir / 'registry.db'}"


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def _query(url: str, sql: str) -> list[Any]:
    """Rows of one read, in plain SQL (the registry's code speaks only the newest schema)."""
    engine = make_engine(url, pooled=False)
    try:
        with read_transaction(engine) as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def revision(url: str) -> str | None:
    """The schema revision of a database."""
    rows = _query(url, "SELECT version_num FROM alembic_version")
    return str(rows[0][0]) if rows else None


def tags(url: str) -> dict[tuple[str, str], str]:
    """Every tag of a database and the digest of the manifest it names."""
    rows = _query(
        url,
        "SELECT r.name, t.name, m.digest FROM tag t JOIN manifest m ON m.id = t.manifest_id "
        "JOIN repository r ON r.id = t.repository_id AND r.id = m.repository_id",
    )
    return {(str(r), str(t)): str(d) for r, t, d in rows}


def summaries(url: str) -> int:
    return int(_query(url, "SELECT COUNT(*) FROM model_summary")[0][0])


def _server(url: str) -> Engine:
    """PostgreSQL: an autocommit engine on the server's ``postgres`` database (to create and drop
    databases)."""
    return create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)


def copy(old: OldRegistry, data_dir: Path, name: str) -> str:
    """A copy of ``old`` in ``data_dir`` (blobs hard-linked: never written in place); on
    PostgreSQL, its database copied as database ``name``. Returns the copy's database URL."""

    def copy_file(src: str, dst: str) -> None:
        if Path(src).name.startswith("registry.db"):
            shutil.copy2(src, dst)
        else:
            os.link(src, dst)

    shutil.copytree(old.data_dir, data_dir, copy_function=copy_file)
    if not old.database_url:
        return ""
    engine = _server(old.database_url)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{make_url(old.database_url).database}"'))
    engine.dispose()
    return make_url(old.database_url).set(database=name).render_as_string(hide_password=False)


def drop(data_dir: Path, database_url: str) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
    if database_url:
        engine = _server(database_url)
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(database_url).database}" WITH (FORCE)'))
        engine.dispose()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def build(data_dir: Path, repositories: int, seed: int, database_url: str = "") -> OldRegistry:
    """``repositories`` models, each with two manifests (v1; v2 adds a system prompt) and three
    tags (v1, v2, latest → v2), at :data:`OLD_REVISION`: in ``data_dir``, and in the database
    ``database_url`` names (a new one on a PostgreSQL server whose user may create databases)
    or else SQLite in ``data_dir``."""
    if database_url:
        engine = _server(database_url)
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{make_url(database_url).database}"'))
        engine.dispose()
    url = url_of(data_dir, database_url)
    data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), OLD_REVISION)
    rng = random.Random(seed)
    contents = {
        "config": json.dumps({"model_format": "gguf", "model_family": "llama"}).encode(),
        "weights": rng.randbytes(64 * 1024),
        "template": b"{{ .Prompt }}",
        "system": b"You answer in one sentence.",
    }
    store = open_store(data_dir)
    for data in contents.values():
        digest = Digest.of_bytes(data)
        asyncio.run(put_blob(store, uuid.uuid4().hex, digest, _one(data), len(data)))
    desc = {k: {"digest": str(Digest.of_bytes(v)), "size": len(v)} for k, v in contents.items()}
    layers = [{"mediaType": mt.OLLAMA_MODEL, **desc["weights"]}, {"mediaType": mt.OLLAMA_TEMPLATE, **desc["template"]}]
    v1 = ollama_manifest(desc["config"], layers)
    v2 = ollama_manifest(desc["config"], [*layers, {"mediaType": mt.OLLAMA_SYSTEM, **desc["system"]}])

    engine = make_engine(url, pooled=False)
    old = MetaData()
    old.reflect(engine)
    t = old.tables
    start = dt.datetime(2026, 11, 1)  # naive UTC, as the registry stores times in SQLite
    rows: dict[str, list[dict[str, object]]] = {name: [] for name in ("repository", "repository_blob", "manifest",
                                                                       "manifest_reference", "tag")}  # fmt: skip
    rows["blob"] = [{"digest": d["digest"], "size": d["size"], "created_at": start} for d in desc.values()]
    found: dict[tuple[str, str], str] = {}
    for i in range(1, repositories + 1):
        name = f"old/model{i}"
        when = start + dt.timedelta(minutes=i)
        rows["repository"].append({"id": i, "key": repository_key(name), "name": name, "created_at": start})
        rows["repository_blob"] += [{"repository_id": i, "digest": d["digest"], "created_at": when}
                                    for d in desc.values()]  # fmt: skip
        for n, raw in ((1, v1), (2, v2)):
            manifest_id = 2 * i + n - 2
            rows["manifest"].append({"id": manifest_id, "repository_id": i, "digest": str(Digest.of_bytes(raw)),
                                     "media_type": mt.DOCKER_MANIFEST, "size": len(raw), "content": raw,
                                     "created_at": when})  # fmt: skip
            needs = [desc["config"], *layers] + ([desc["system"]] if n == 2 else [])
            rows["manifest_reference"] += [{"manifest_id": manifest_id, "digest": d["digest"]} for d in needs]
        for tag, n in (("v1", 1), ("v2", 2), ("latest", 2)):
            rows["tag"].append({"repository_id": i, "name": tag, "manifest_id": 2 * i + n - 2, "updated_at": when})
            found[(name, tag)] = str(Digest.of_bytes(v1 if n == 1 else v2))
    with write_transaction(engine) as conn:
        for table in ("blob", "repository", "repository_blob", "manifest", "manifest_reference", "tag"):
            if rows[table]:
                conn.execute(t[table].insert(), rows[table])
        if engine.dialect.name == "postgresql":  # the ids were given: move the sequences past them
            for table in ("repository", "manifest"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {2 * repositories})"))
    engine.dispose()
    return OldRegistry(data_dir, database_url, repositories, found)
