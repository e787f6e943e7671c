"""Alembic environment: the URL comes from the caller (registry.db.upgrade) or from
``HANGAR_REGISTRY_DATABASE_URL``; the target metadata from registry.models."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

import registry.mirror.cache  # the mirror's tables (registers them on Base.metadata)
import registry.models  # noqa: F401  (registers the tables on Base.metadata)
from registry import config as registry_config
from registry.db import Base, make_engine

target_metadata = Base.metadata


def _url() -> str:
    url = context.config.attributes.get("database_url")
    return url or registry_config.from_env().resolved_database_url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(_url(), pooled=False)
    with engine.connect().execution_options(hangar_write=True) as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Replicas that start together migrate one after another.
                connection.execute(text("SELECT pg_advisory_xact_lock(7245310)"))
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
