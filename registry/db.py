"""SQLAlchemy plumbing: the declarative base, a UTC timestamp type, the engine factory and the
Alembic upgrade that is the only way the schema is ever created.

SQLite (the embedded default) runs in WAL mode with a busy timeout so several worker processes can
share it; write transactions start with ``BEGIN IMMEDIATE`` so two writers queue instead of
failing on a lock upgrade. PostgreSQL needs nothing special."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
WRITE = "hangar_write"  # execution option that makes SQLite begin with BEGIN IMMEDIATE


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """One short read transaction (registry.meta and registry.accounts run each method in one)."""
    with engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One short write transaction: on SQLite it begins with ``BEGIN IMMEDIATE`` (:data:`WRITE`)."""
    with engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            yield conn


class Transactions:
    """One engine, and a short transaction per method: the base of ``registry.meta.Metadata`` and
    ``registry.accounts.Accounts``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _read(self) -> AbstractContextManager[Connection]:
        return read_transaction(self.engine)

    def _write(self) -> AbstractContextManager[Connection]:
        return write_transaction(self.engine)


def make_engine(url: str, *, pool_size: int = 20, pooled: bool = True) -> Engine:
    """An engine for ``url``; ``pooled=False`` for one-shot tools such as migrations."""
    parsed = make_url(url)
    pooling: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 20} if pooled else {"poolclass": NullPool}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **pooling)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, **pooling)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); pysqlite's implicit transactions get in the way.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")


def alembic_config(url: str) -> Any:
    """Alembic configured in code: the database URL has one source (our settings)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    cfg.attributes["database_url"] = url
    return cfg


def upgrade(url: str) -> None:
    """Apply every Alembic migration up to head (creates the schema on a new database)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached or used for now (a restart, a
    failover, a lost connection, SQLite's lock held too long), rather than a bug: such requests
    answer 503 with Retry-After and the next ones work once it is back (the pool pre-pings)."""
    if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return True
    return isinstance(error, sa_exc.DBAPIError) and bool(error.connection_invalidated)
