"""The schema comes only from Alembic, and the migrations match the models."""

from pathlib import Path

import pytest
from alembic import command
from alembic.util.exc import CommandError
from sqlalchemy import inspect

from registry import db


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, database_factory) -> str:  # type: ignore[no-untyped-def]
    return database_factory(request.param) or f"sqlite:///{tmp_path / 'registry.db'}"


def test_upgrade_creates_the_schema_and_is_idempotent(database_url: str) -> None:
    db.upgrade(database_url)
    db.upgrade(database_url)
    engine = db.make_engine(database_url, pooled=False)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    expected = {"repository", "blob", "repository_blob", "manifest", "manifest_reference", "tag", "upload", "secret"}
    assert expected <= tables
    assert "alembic_version" in tables


def test_models_and_migrations_agree(database_url: str) -> None:
    db.upgrade(database_url)
    try:
        command.check(db.alembic_config(database_url))
    except CommandError as e:  # pragma: no cover - the message lists the drift
        pytest.fail(f"models and migrations differ; write a migration: {e}")
