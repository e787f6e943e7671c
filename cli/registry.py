"""``hangar registry …``: serve, migrate, gc and fsck. Imports of the server stack happen inside the
commands, so building the parser stays cheap for the rest of the CLI."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from formats.units import parse_duration
from registry import config

if TYPE_CHECKING:
    from registry.accounts import Accounts


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
    serve.add_argument(
        "--redirect",
        choices=("on", "off"),
        help="on (default): blob GETs answer 307 to the object store's presigned URL; off: stream them through",
    )
    serve.add_argument(
        "--metrics",
        choices=("on", "off"),
        help="on (default): GET /metrics answers Prometheus text, unauthenticated; off: no /metrics",
    )
    serve.add_argument("--listen", help=f"HOST:PORT to listen on (default {config.DEFAULT_LISTEN})")
    serve.add_argument(
        "--public-url",
        help="scheme://host[:port] clients use to reach this registry: named in challenges and URLs, and the "
        "address signed requests must be bound to (default: the listen address and loopback names)",
    )
    serve.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        metavar="HOST[:PORT]|URL",
        help="another name this registry answers to (repeatable, or comma-separated in "
        "HANGAR_REGISTRY_ALLOWED_HOSTS); signed requests naming any other host are refused",
    )
    serve.add_argument(
        "--trusted-proxy",
        dest="trusted_proxies",
        action="append",
        metavar="IP|CIDR",
        help="believe X-Forwarded-Proto/-For from this address (repeatable; HANGAR_REGISTRY_TRUSTED_PROXIES; "
        "default: from nobody)",
    )
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--upload-max-age", help="purge upload sessions idle this long, e.g. 24h, 90m (default 24h)")
    serve.add_argument(
        "--signed-url-ttl",
        type=int,
        help="lifetime in seconds of signed blob URLs; Ollama downloads a whole blob from one (default 1800)",
    )
    serve.add_argument(
        "--rate-limit",
        type=int,
        help="requests a minute per client address to /token and /hangar/v1, then 429 (default 600; 0: off; "
        "per worker)",
    )
    serve.add_argument(
        "--auth",
        choices=["required", "off"],
        help="required (default): tokens for all but anonymous pulls of public repositories; "
        "off: no authentication, anyone may push (trusted networks only)",
    )
    serve.add_argument(
        "--signup",
        choices=["open", "invite", "closed"],
        help="who may create an account with 'hangar signin': anyone, holders of an invite code "
        "('hangar registry admin invite'; the default), or nobody",
    )
    serve.add_argument("--token-ttl", type=int, help="lifetime in seconds of issued bearer tokens (default 300)")
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], help="default info")
    serve.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", help="private key for --ssl-certfile (PEM)")
    _mirror_args(serve)
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

    fsck = commands.add_parser(
        "fsck",
        help="check that every blob and manifest the database names is in the store, intact",
        description="Check the database against the blob store: every blob's bytes present with the right size "
        "and a sample of digests, no orphan rows, no manifest needing a missing blob (registry.fsck lists the "
        "checks). Exit status 1 while a fault is left. Safe while the registry is serving.",
    )
    _storage_args(fsck)
    fsck.add_argument("--repair", action="store_true", help="fix what can be fixed without losing good data")
    fsck.add_argument("--sample", type=int, default=16, metavar="N", help="blobs hashed whole, at random (default 16)")
    fsck.add_argument("--full", action="store_true", help="hash every blob whole")
    fsck.add_argument("--grace", default="1h", help="leave crash leftovers younger than this (default 1h)")
    fsck.add_argument("--seed", type=int, help="seed of the random sample (printed; to repeat a run)")
    fsck.set_defaults(handler=_fsck)

    _add_admin_commands(commands)
    _add_cache_commands(commands)


def _add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = commands.add_parser(
        "admin",
        help="manage accounts directly in the registry's database",
        description="Administration that works on the database directly (run it on the registry host).",
    )
    sub = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")

    user = sub.add_parser("user", help="create or disable users").add_subparsers(
        dest="user_command", required=True, metavar="COMMAND"
    )
    p = user.add_parser("create", help="create a user (its name is its namespace)")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="may do everything everywhere")
    p.add_argument("--pubkey-file", help="bind this ssh-ed25519 public key (e.g. ~/.hangar/id_ed25519.pub)")
    _allow_library_arg(p)
    _storage_args(p)
    p.set_defaults(handler=_admin_user_create)
    p = user.add_parser("disable", help="disable a user (tokens are refused; data stays)")
    p.add_argument("name")
    p.add_argument("--enable", action="store_true", help="enable again instead")
    _storage_args(p)
    p.set_defaults(handler=_admin_user_disable)

    org = sub.add_parser("org", help="create organisations and manage their members").add_subparsers(
        dest="org_command", required=True, metavar="COMMAND"
    )
    p = org.add_parser("create", help="create an organisation (its name is its namespace)")
    p.add_argument("name")
    p.add_argument("--owner", help="a user who becomes its first owner")
    _allow_library_arg(p)
    _storage_args(p)
    p.set_defaults(handler=_admin_org_create)
    p = org.add_parser("add-member", help="add a member (or change a member's role)")
    p.add_argument("org")
    p.add_argument("user")
    p.add_argument("--role", choices=["owner", "writer", "reader"], default="reader")
    _storage_args(p)
    p.set_defaults(handler=_admin_org_add_member)

    p = sub.add_parser("invite", help="print a one-time sign-up code")
    p.add_argument("--expires", default="7d", help="lifetime of the code (default 7d)")
    _storage_args(p)
    p.set_defaults(handler=_admin_invite)

    p = sub.add_parser("audit", help="show the newest audit log entries")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--action", help="only this action (push, delete, signin, signup, auth, key.add …)")
    _storage_args(p)
    p.set_defaults(handler=_admin_audit)


def _allow_library_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-library",
        action="store_true",
        help="allow the reserved name 'library' (where short names such as llama3 resolve when this "
        "registry is the default host): its owner publishes for everyone",
    )


def _storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="blob storage and SQLite directory (default ~/.hangar/registry)")
    parser.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="where blobs live: file:///PATH (default DATA_DIR/blobs) or s3://BUCKET[/PREFIX] (endpoint, "
        "region and credentials from the AWS environment variables and config files)",
    )


def _settings(args: argparse.Namespace) -> config.Settings:
    names = ("listen", "data_dir", "database_url", "public_url", "workers", "upload_max_age", "signed_url_ttl",
             "auth", "signup", "token_ttl", "log_level", "allowed_hosts", "trusted_proxies", "ssl_certfile",
             "ssl_keyfile", "rate_limit", "storage", "redirect", "metrics", "upstream", "upstream_credentials",
             "upstream_check_interval", "cache_max_size")  # fmt: skip
    values = {n: getattr(args, n, None) for n in names}
    for n in ("allowed_hosts", "trusted_proxies", "upstream"):  # repeatable flags: one comma-separated setting
        items: list[str] | None = values[n]
        values[n] = ",".join(items) if items else None
    return config.from_env(**values)


def _mirror_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--upstream",
        action="append",
        metavar="URL|NAMESPACE=URL",
        help="be a pull-through cache of this registry (repeatable; HANGAR_REGISTRY_UPSTREAM, comma-separated): "
        "names that are not this registry's own resolve to the upstream serving their namespace, e.g. "
        "--upstream library=https://registry.ollama.ai; a bare URL serves every other namespace",
    )
    parser.add_argument(
        "--upstream-credentials",
        metavar="FILE",
        help="TOML file with what the mirror presents to each upstream: username/password, token, or an "
        "ed25519 key for Ollama's signed token requests (docs/mirror.md)",
    )
    parser.add_argument(
        "--upstream-check-interval",
        metavar="DURATION",
        help="ask the upstream whether a cached tag moved at most this often (default 5m)",
    )
    parser.add_argument(
        "--cache-max-size",
        metavar="SIZE",
        help="evict the least recently used cached models (not local ones, not pinned) above this, e.g. 500GB",
    )


def _add_cache_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = commands.add_parser(
        "cache",
        help="list, evict, pin, copy and make local the models a mirror cached from its upstreams",
        description="The pull-through cache (hangar registry serve --upstream): run on the registry host.",
    )
    sub = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", help="cached models, least recently used first, with sizes")
    _storage_args(p)
    p.set_defaults(handler=_cache_list)
    p = sub.add_parser("evict", help="drop cached models: those named, or the least recently used above a size")
    p.add_argument("names", nargs="*", metavar="NAMESPACE/MODEL")
    p.add_argument("--max-size", metavar="SIZE", help="without names: evict down to this (default --cache-max-size)")
    _storage_args(p)
    _mirror_args(p)
    p.set_defaults(handler=_cache_evict)
    p = sub.add_parser("pin", help="never evict a cached model (--off: evictable again)")
    p.add_argument("name", metavar="NAMESPACE/MODEL")
    p.add_argument("--off", action="store_true", help="unpin instead")
    _storage_args(p)
    p.set_defaults(handler=_cache_pin)
    p = sub.add_parser(
        "copy",
        help="copy a cached model (every tag, or one) into a local repository, sharing its blobs",
        description="Copy a cached model into a local repository: its manifests become the registry's own and "
        "its blobs are linked, not downloaded or stored again. The copy is never evicted nor checked upstream, and "
        "takes pushes from whoever may push to its namespace. SOURCE:TAG DEST[:TAG] copies one tag.",
    )
    p.add_argument("source", metavar="SOURCE[:TAG]", help="a cached model, e.g. library/gemma3 or library/gemma3:1b")
    p.add_argument("destination", metavar="DEST[:TAG]", help="a local repository, e.g. acme/gemma3")
    p.add_argument(
        "--auth",
        choices=["required", "off"],
        help="as the registry serves (HANGAR_REGISTRY_AUTH; default required): with accounts, DEST's namespace "
        "must be a user's or an organisation's, as for a push",
    )
    _storage_args(p)
    p.set_defaults(handler=_cache_copy)
    p = sub.add_parser(
        "make-local",
        help="make a cached model local in place: no longer checked upstream nor evicted, and it takes pushes",
        description="Turn a cached repository into one of the registry's own, keeping its tags and blobs: it stops "
        "following its upstream, is never evicted, and takes pushes from whoever may push to its namespace.",
    )
    p.add_argument("name", metavar="NAMESPACE/MODEL")
    _storage_args(p)
    p.set_defaults(handler=_cache_make_local)


def _cache_state(args: argparse.Namespace) -> tuple[config.Settings, Any, Any, Any]:
    from registry import db
    from registry.meta import Metadata
    from registry.mirror.cache import CacheState
    from registry.storage import open_store

    settings = _settings(args)
    db.upgrade(settings.resolved_database_url)
    engine = db.make_engine(settings.resolved_database_url, pooled=False)
    return (
        settings,
        CacheState(engine),
        Metadata(engine),
        open_store(settings.storage_location, settings.resolved_data_dir),
    )


def _cache_list(args: argparse.Namespace) -> int:
    _, cache, _, _ = _cache_state(args)
    rows = cache.cached()
    if not rows:
        print("nothing is cached")
        return 0
    print(f"{'NAME':40} {'SIZE':>10}  {'LAST USED':20} {'PINNED':6} UPSTREAM")
    for r in rows:
        used = r.last_used.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{r.name:40} {_human(r.size):>10}  {used:20} {'yes' if r.pinned else '':6} {r.upstream}")
    print(f"total {_human(cache.total_size())} (blobs shared between models counted once)")
    return 0


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.1f} TB"


def _cache_evict(args: argparse.Namespace) -> int:
    import asyncio

    from registry.mirror.config import parse_cache_size
    from registry.mirror.service import drop, evict

    settings, cache, meta, store = _cache_state(args)
    if args.names:
        missing = [n for n in args.names if not asyncio.run(drop(cache, meta, store, n))]
        for name in args.names:
            if name not in missing:
                print(f"evicted {name}")
        for name in missing:
            print(f"error: {name} is not a cached model (hangar registry cache list)", file=sys.stderr)
        return 1 if missing else 0
    limit = parse_cache_size(args.max_size or settings.cache_max_size)
    if limit is None:
        print("error: name the models to evict, or give --max-size (or --cache-max-size)", file=sys.stderr)
        return 2
    for name in asyncio.run(evict(cache, meta, store, limit)):
        print(f"evicted {name}")
    return 0


def _cache_pin(args: argparse.Namespace) -> int:
    _, cache, _, _ = _cache_state(args)
    if not cache.set_pinned(args.name, not args.off):
        print(f"error: {args.name} is not a cached model (hangar registry cache list)", file=sys.stderr)
        return 1
    print(f"{'unpinned' if args.off else 'pinned'} {args.name}")
    return 0


def _cache_copy(args: argparse.Namespace) -> int:
    import asyncio

    from registry.accounts import Accounts
    from registry.mirror.local import LocalError, copy_cached

    settings, cache, meta, store = _cache_state(args)
    try:
        accounts = Accounts(meta.engine)
        required = settings.auth == "required"
        copied = asyncio.run(
            copy_cached(cache, meta, store, accounts, args.source, args.destination, accounts_required=required)
        )
    except LocalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for source, destination in copied:
        print(f"copied {source} to {destination}")
    return 0


def _cache_make_local(args: argparse.Namespace) -> int:
    import asyncio

    from registry.mirror.local import LocalError, make_local

    _, cache, _, _ = _cache_state(args)
    try:
        upstream = asyncio.run(make_local(cache, args.name))
    except LocalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.name} is a local model now (it was a cache of {upstream}): never evicted, and it takes pushes")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from registry.server import serve

    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        print("error: --ssl-certfile and --ssl-keyfile go together", file=sys.stderr)
        return 2
    serve(_settings(args))
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
    grace = parse_duration(args.grace)
    db.upgrade(settings.resolved_database_url)
    meta = Metadata(db.make_engine(settings.resolved_database_url, pooled=False))
    store = open_store(settings.storage_location, settings.resolved_data_dir)

    async def run() -> tuple[gc.Plan, gc.Plan]:
        plan = await gc.plan_uploads(meta, store, settings.upload_max_age)
        blobs = await gc.plan_blobs(meta, grace)
        plan.blobs, plan.cutoff = blobs.blobs, blobs.cutoff
        done = gc.Plan() if args.dry_run else await gc.execute(meta, store, plan)
        return plan, done

    import asyncio

    plan, done = asyncio.run(run())
    verb = "would delete" if args.dry_run else "deleted"
    shown = plan if args.dry_run else done
    for digest in shown.blobs:
        print(f"{verb} blob {digest}")
    for upload_id in shown.uploads:
        print(f"{verb} upload {upload_id}")
    print(f"{verb} {len(shown.blobs)} blob(s) and {len(shown.uploads)} upload(s)")
    return 0


def _fsck(args: argparse.Namespace) -> int:
    import asyncio
    import random

    from registry import db
    from registry.fsck import Fsck
    from registry.meta import Metadata
    from registry.storage import open_store

    settings = _settings(args)
    db.upgrade(settings.resolved_database_url)
    meta = Metadata(db.make_engine(settings.resolved_database_url, pooled=False))
    store = open_store(settings.storage_location, settings.resolved_data_dir)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"fsck of {_redact(settings.resolved_database_url)} (sample seed {seed})")
    check = Fsck(meta, store, repair=args.repair, sample=max(args.sample, 0), full=args.full,
                 grace=parse_duration(args.grace), seed=seed, on_problem=print)  # fmt: skip
    report = asyncio.run(check.run())
    print(report.summary())
    return 0 if report.clean else 1


def _accounts(args: argparse.Namespace) -> Accounts:
    from registry import db
    from registry.accounts import Accounts

    settings = _settings(args)
    db.upgrade(settings.resolved_database_url)
    return Accounts(db.make_engine(settings.resolved_database_url, pooled=False))


def _admin_user_create(args: argparse.Namespace) -> int:
    from pathlib import Path

    from formats.auth import decode_public_key, encode_public_key

    key = None
    if args.pubkey_file:
        key = encode_public_key(decode_public_key(Path(args.pubkey_file).expanduser().read_text()))
    from registry.accounts import AccountError

    try:
        user = _accounts(args).create_user(
            args.name, admin=args.admin, key=key, key_name="added by an administrator", allow_library=args.allow_library
        )
    except AccountError as e:  # a reserved or taken name: a message, not a traceback
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"created user {user.name}{' (administrator)' if user.is_admin else ''}{' with its key' if key else ''}")
    return 0


def _admin_user_disable(args: argparse.Namespace) -> int:
    _accounts(args).set_disabled(args.name, not args.enable)
    print(f"{'enabled' if args.enable else 'disabled'} {args.name}")
    return 0


def _admin_org_create(args: argparse.Namespace) -> int:
    from registry.accounts import AccountError

    try:
        org = _accounts(args).create_org(args.name, args.owner, allow_library=args.allow_library)
    except AccountError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"created organisation {org.name}" + (f" owned by {args.owner}" if args.owner else ""))
    return 0


def _admin_org_add_member(args: argparse.Namespace) -> int:
    _accounts(args).set_member(args.org, args.user, args.role)
    print(f"{args.user} is {args.role} of {args.org}")
    return 0


def _admin_invite(args: argparse.Namespace) -> int:
    code = _accounts(args).create_invite(parse_duration(args.expires))
    print(code)
    return 0


def _admin_audit(args: argparse.Namespace) -> int:
    for row in reversed(_accounts(args).audit_log(args.limit, args.action)):
        detail = " ".join(f"{k}={v}" for k, v in row.detail.items())
        when = f"{row.at:%Y-%m-%d %H:%M:%S}"
        print(f"{when}  {row.outcome:6}  {row.actor:20}  {row.action:12}  {row.target}  {row.remote}  {detail}")
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
