"""``hangar outdated``, ``update``, ``tags``, ``search`` and ``readme``: compare local models with
their registries, pull the ones whose tag moved, list a repository's tags, search a registry, and
set the README a registry's web site shows for a model."""

from __future__ import annotations

import argparse
import sys

from client.config import ClientSettings, load
from client.errors import printable
from client.store import LocalModel, Store


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outdated = commands.add_parser(
        "outdated",
        help="show which local models have a newer version in their registry",
        description="Ask each model's registry whether its tag still points to the manifest in the "
        "store (no blobs move). Exits 1 if a registry could not be asked.",
    )
    outdated.add_argument("models", nargs="*", help="models to check (default: every local model)")
    outdated.add_argument("--insecure", action="store_true", help="use plain http for the registries")
    outdated.set_defaults(handler=_outdated)

    update = commands.add_parser(
        "update",
        help="pull the newer version of local models whose tag moved in their registry",
        description="Check the models as 'hangar outdated' does and pull each one with a newer "
        "version: only blobs not in the store are fetched, and, as with any pull that moves a tag, "
        "the old version's blobs that no model uses any more are deleted. Models their registry "
        "does not have (made with 'hangar create') are left alone. Exits 1 if a model could not be "
        "checked or pulled.",
    )
    update.add_argument("models", nargs="*", help="models to update (default: every local model)")
    update.add_argument("--insecure", action="store_true", help="use plain http for the registries")
    update.add_argument("--dry-run", action="store_true", help="only say what would be pulled")
    update.set_defaults(handler=_update)

    tags = commands.add_parser(
        "tags",
        help="list the tags of a model in its registry",
        description="List every tag of MODEL's repository in its registry (its tag, if given, is ignored).",
    )
    tags.add_argument("model", help="e.g. models.lan:5000/alice/model")
    tags.add_argument("--insecure", action="store_true", help="use plain http for this registry")
    tags.set_defaults(handler=_tags)

    search = commands.add_parser(
        "search",
        help="search a Hangar registry's models",
        description="List the models of a Hangar registry whose name and description hold every word of "
        "QUERY (the registry's GET /api/search, the search of its web site): its public models, and the "
        "private ones you may read when you signed in to it ('hangar signin') or logged in ('hangar login').",
    )
    search.add_argument("query", nargs="*", help="words to look for (none: the newest models)")
    search.add_argument("-r", "--registry", help="the registry's host[:port] (default: HANGAR_REGISTRY)")
    search.add_argument(
        "-c", "--capability", action="append", default=[], choices=["embedding", "vision", "tools", "thinking"],
        help="only models with this capability (repeatable: all must match)",
    )  # fmt: skip
    search.add_argument("--insecure", action="store_true", help="use plain http for this registry")
    search.set_defaults(handler=_search)

    readme = commands.add_parser(
        "readme",
        help="show or set a local model's README (the model page of a Hangar registry shows it)",
        description="With FILE, make that Markdown file the README of the local MODEL: a layer of media type "
        "application/vnd.hangar.image.readme, replacing any README it had, so that 'hangar push' takes it to "
        "the registry, whose web site renders it on the model page (raw HTML is shown as text). Without "
        "FILE, print the model's README.",
    )
    readme.add_argument("model", help="a local model, e.g. models.lan:5000/alice/model")
    readme.add_argument("file", nargs="?", help="a Markdown file, or - for standard input")
    readme.add_argument("--remove", action="store_true", help="remove the model's README")
    readme.set_defaults(handler=_readme)


def _local_models(names: list[str]) -> tuple[ClientSettings, Store, list[LocalModel]]:
    from client.store_ops import settled_store

    settings, store = settled_store(lambda line: print(line, file=sys.stderr))
    if not names:
        return settings, store, sorted(store.models(), key=lambda m: m.name.display())
    return settings, store, [store.get(store.parse_name(n, settings.default_host)) for n in names]


def _outdated(args: argparse.Namespace) -> int:
    import asyncio

    from client.progress import print_table
    from client.remote import check_updates

    settings, _, models = _local_models(args.models)
    checks = asyncio.run(check_updates(models, settings, insecure=args.insecure))
    # Statuses hold registry error text: printable() keeps its escape sequences off the terminal.
    print_table([("NAME", "ID", "STATUS"), *((c.name.display(), c.local_id[:12], printable(c.status)) for c in checks)])
    return 1 if any(c.error for c in checks) else 0


def _update(args: argparse.Namespace) -> int:
    import asyncio

    from client import errors
    from client.progress import ProgressView
    from client.pull import PullOptions, pull
    from client.remote import check_updates

    settings, store, models = _local_models(args.models)
    checks = asyncio.run(check_updates(models, settings, insecure=args.insecure))
    failed = 0
    for check in checks:
        if check.error:
            print(f"{check.name.display()}: cannot check: {printable(check.error)}", file=sys.stderr)
            failed += 1
    stale = [c for c in checks if c.outdated]
    if not stale:
        print("every model is up to date" if not failed else "nothing to update")
        return 1 if failed else 0
    for check in stale:
        shown = check.name.display()
        if args.dry_run:
            print(f"would update {shown} ({check.local_id[:12]} → {(check.remote_id or '')[:12]})")
            continue
        print(f"updating {shown}")
        try:
            with ProgressView() as view:
                asyncio.run(pull(check.name, store, settings, PullOptions(insecure=args.insecure), view))
        except KeyboardInterrupt:
            print("\nupdate interrupted; run it again to resume where it stopped", file=sys.stderr)
            return 130
        except errors.HangarError as e:
            print(f"{shown}: {printable(str(e))}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _tags(args: argparse.Namespace) -> int:
    import asyncio

    from client.remote import list_tags

    settings = load()
    name = Store(settings.models).parse_name(args.model, settings.default_host)
    for tag in asyncio.run(list_tags(name, settings, insecure=args.insecure)):
        print(printable(tag))  # the registry's text: no escape sequences reach the terminal
    return 0


def _search(args: argparse.Namespace) -> int:
    import asyncio

    from client.progress import print_table
    from client.remote import search

    settings = load()
    host = (args.registry or settings.default_host).strip().strip("/")
    for prefix in ("https://", "http://"):
        host = host.removeprefix(prefix)
    hits = asyncio.run(
        search(host, " ".join(args.query), settings, capabilities=args.capability, insecure=args.insecure)
    )
    if not hits:
        print("no models found", file=sys.stderr)
        return 0

    def clip(text: str, width: int) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    # Everything in a row is the registry's text: printable() keeps escape sequences off the terminal.
    rows = [("NAME", "DESCRIPTION", "CAPABILITIES", "SIZES", "TAGS", "UPDATED")]
    for h in hits:
        rows.append(
            (
                printable(h.name),
                printable(clip(h.description, 60)),
                printable(",".join(h.capabilities)),
                printable(",".join(h.sizes)),
                str(h.tags),
                printable(h.updated_at[:10]),
            )
        )
    print_table(rows)
    return 0


def _readme(args: argparse.Namespace) -> int:
    from pathlib import Path

    from client.readme import ReadmeError, readme_of, set_readme

    settings = load()
    store = Store(settings.models).ensure()
    name = store.parse_name(args.model, settings.default_host)
    if args.remove or args.file is not None:
        if args.remove and args.file is not None:
            print("error: give a FILE or --remove, not both", file=sys.stderr)
            return 2
        text = None
        if args.file == "-":
            text = sys.stdin.read()
        elif args.file is not None:
            try:
                text = Path(args.file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                print(f"error: cannot read {args.file}: {e}", file=sys.stderr)
                return 1
        try:
            model = set_readme(store, name, text)
        except ReadmeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        done = "removed the README of" if text is None else "set the README of"
        print(f"{done} {model.name.display()}; 'hangar push {model.name.display()}' takes it to the registry")
        return 0
    text = readme_of(store, name)
    if text is None:
        print(f"{name.display()} has no README", file=sys.stderr)
        return 1
    # A pulled model's README is its author's text: no escape sequences reach the terminal.
    print(printable(text, newlines=True), end="" if text.endswith("\n") else "\n")
    return 0
