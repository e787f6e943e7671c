"""``hangar registry …``: serve, migrate and gc. Imports of the server stack happen inside the
commands, so building the parser stays cheap for the rest of the CLI."""

from __future__ import annotations

import argparse
import asyncio
import sys

from registry import config


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "registry",
        help="run and manage a Hangar registry server",
        description="Run and manage a Hangar registry (an OCI distribution server that Ollama can use).",
    )
    commands = parser.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="start the registry server",
        description=(
            "Start the registry. Data defaults to ~/.hangar/registry with SQLite inside it; "
            "--database-url postgresql+psycopg://… uses PostgreSQL instead. Every flag can also be "
            "set with a HANGAR_REGISTRY_<FLAG> environment variable (e.g. HANGAR_REGISTRY_LISTEN)."
        ),
    )
    _storage_args(serve)
    serve.add_argument("--listen", help=f"HOST:PORT to listen on (default {config.DEFAULT_LISTEN})")
    serve.add_argument(
        "--public-url",
        help="scheme://host[:port] clients use to reach this registry (default: from each request's Host header)",
    )
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--upload-max-age", help="purge upload sessions idle this long, e.g. 24h, 90m (default 24h)")
    serve.add_argument("--signed-url-ttl", type=int, help="lifetime in seconds of signed blob URLs (default 86400)")
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], help="default info")
    serve.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="private key for --ssl-certfile (PEM)")
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    _storage_args(migrate)
    migrate.set_defaults(handler=_migrate)

    gc = commands.add_parser(
        "gc",
        help="delete blobs no repository uses and abandoned uploads",
        description="Online garbage collection: safe while the registry is serving.",
    )
    _storage_args(gc)
    gc.add_argument("--grace", default="1h", help="keep unreferenced blobs younger than this (default 1h)")
    gc.add_argument("--upload-max-age", help="abandoned upload age (default 24h)")
    gc.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    gc.set_defaults(handler=_gc)


def _storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="blob storage and SQLite directory (default ~/.hangar/registry)")
    parser.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db")


def _settings(args: argparse.Namespace) -> config.Settings:
    names = (
        "listen",
        "data_dir",
        "database_url",
        "public_url",
        "workers",
        "upload_max_age",
        "signed_url_ttl",
        "log_level",
    )
    return config.from_env(**{n: getattr(args, n, None) for n in names})


def _serve(args: argparse.Namespace) -> int:
    from registry.server import serve

    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        print("error: --ssl-certfile and --ssl-keyfile go together", file=sys.stderr)
        return 2
    serve(_settings(args), ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from registry import db

    settings = _settings(args)
    db.upgrade(settings.resolved_database_url)
    print(f"database is at the latest schema: {_redact(settings.resolved_database_url)}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from registry import db, gc
    from registry.meta import Metadata
    from registry.storage import open_store

    settings = _settings(args)
    grace = config.parse_duration(args.grace)
    db.upgrade(settings.resolved_database_url)
    meta = Metadata(db.make_engine(settings.resolved_database_url, pooled=False))
    store = open_store(settings.resolved_data_dir)

    async def run() -> tuple[gc.Plan, gc.Plan]:
        plan = await gc.plan_uploads(meta, store, settings.upload_max_age)
        plan.blobs = (await gc.plan_blobs(meta, grace)).blobs
        done = gc.Plan() if args.dry_run else await gc.execute(meta, store, plan)
        return plan, done

    plan, done = asyncio.run(run())
    verb = "would delete" if args.dry_run else "deleted"
    shown = plan if args.dry_run else done
    for digest in shown.blobs:
        print(f"{verb} blob {digest}")
    for upload_id in shown.uploads:
        print(f"{verb} upload {upload_id}")
    print(f"{verb} {len(shown.blobs)} blob(s) and {len(shown.uploads)} upload(s)")
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
