"""The ``hangar`` command (``pyproject.toml``: ``hangar = "cli.main:main"``): assembles the
client's commands (here and in ``cli.remote``, ``cli.create``, ``cli.account``), the runtime's
(``cli.runtime``) and the registry's (``cli.registry``). All human output is in ``cli/``; the
parts return data and raise their errors, and none of them imports this package."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from client import errors
from client.config import ClientSettings
from client.store import Store
from formats.names import ModelName
from formats.units import parse_size

if TYPE_CHECKING:
    from client.model_info import ModelInfo


def build_parser() -> argparse.ArgumentParser:
    from cli import account as cli_account
    from cli import create as cli_create
    from cli import direct as cli_direct
    from cli import login as cli_login
    from cli import registry as registry_cli
    from cli import remote as cli_remote
    from cli import runtime as cli_runtime

    parser = argparse.ArgumentParser(
        prog="hangar",
        description="Hangar: a self-hosted model registry, its client and a local runtime.",
        epilog="Environment: HANGAR_MODELS (model store, default ~/.hangar/models), "
        "HANGAR_REGISTRY (registry for names without a host, default registry.ollama.ai), "
        "HANGAR_HOME (default ~/.hangar). Per-registry settings: ~/.hangar/config.toml.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pull = commands.add_parser("pull", help="download a model from a registry", description=(
        "Download a model. Blobs come in parallel ranged parts and are verified before they "
        "are kept; an interrupted pull resumes where it stopped when run again."))  # fmt: skip
    pull.add_argument("model", help="model name, e.g. llama3.2, alice/model:v1, host:5000/ns/model:tag")
    _transfer_args(pull)
    pull.add_argument("--concurrency", type=int, help="parallel parts per blob (default 4)")
    pull.set_defaults(handler=_pull)

    push = commands.add_parser("push", help="upload a model to a registry", description=(
        "Upload a model: blobs the registry already has are skipped, inherited layers are mounted, "
        "the rest go up in chunks. An interrupted push resumes when run again."))  # fmt: skip
    push.add_argument("model", help="model name including the registry host, e.g. models.lan:5000/alice/model")
    _transfer_args(push)
    push.set_defaults(handler=_push)

    ls = commands.add_parser("list", aliases=["ls"], help="list local models")
    ls.add_argument("prefix", nargs="?", help="only names starting with this")
    ls.set_defaults(handler=_list)

    rm = commands.add_parser("rm", help="remove local models and the blobs only they use")
    rm.add_argument("models", nargs="+")
    rm.set_defaults(handler=_rm)

    cp = commands.add_parser("cp", help="copy a model under a new name (blobs are shared)")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(handler=_cp)

    show = commands.add_parser("show", help="show a model's details, Modelfile, parameters, template …")
    show.add_argument("model")
    which = show.add_mutually_exclusive_group()
    for flag, what in (("modelfile", "the Modelfile that recreates it"), ("parameters", "its parameters"),
                       ("template", "its prompt template"), ("system", "its system prompt"),
                       ("license", "its license(s)")):  # fmt: skip
        which.add_argument(f"--{flag}", action="store_true", help=f"print only {what}")
    show.add_argument("-v", "--verbose", action="store_true", help="also print the GGUF metadata")
    show.set_defaults(handler=_show)

    prune = commands.add_parser(
        "prune",
        help="delete blobs no model uses and stale partial downloads",
        description="Delete blobs no local model references, and partial downloads and temporary "
        "files, older than the grace period (younger ones may belong to a pull still running).",
    )
    prune.add_argument("--grace", default="1h", help="keep files younger than this (default 1h; e.g. 0s, 30m, 2d)")
    prune.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    prune.set_defaults(handler=_prune)

    fsck = commands.add_parser(
        "fsck",
        help="check the local store: every model's blobs present and verified",
        description="Check every manifest in the store, and every blob they name (size, sha256); report partial "
        "downloads, unused blobs and stray files. Exit status 1 while a model is damaged or incomplete.",
    )
    fsck.add_argument("--repair", action="store_true", help="remove damaged blobs, unreadable manifests, old partials")
    fsck.add_argument("--quick", action="store_true", help="check sizes only, without hashing")
    fsck.add_argument("--grace", default="1h", help="leave partial files younger than this (default 1h)")
    fsck.set_defaults(handler=_fsck)

    export = commands.add_parser(
        "export", help="write a model to a tar file (an OCI image layout) for air-gapped transfer"
    )
    export.add_argument("model")
    export.add_argument("file", help="the .tar file to write")
    export.set_defaults(handler=_export)

    imp = commands.add_parser("import", help="read a model from a tar file made by 'hangar export'")
    imp.add_argument("file")
    imp.add_argument("name", nargs="?", help="import under this name (default: the name in the archive)")
    imp.add_argument("--force", action="store_true", help="replace a different model already stored under that name")
    imp.set_defaults(handler=_import)

    cli_remote.add_commands(commands)
    cli_direct.add_commands(commands)
    cli_runtime.add_commands(commands)
    cli_create.add_commands(commands)
    cli_account.add_commands(commands)
    cli_login.add_commands(commands)
    registry_cli.add_commands(commands)
    return parser


def _transfer_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--insecure", action="store_true", help="use plain http for this registry")
    parser.add_argument("--max-rate", type=parse_size, help="bandwidth limit in bytes/s, e.g. 20MB")
    parser.add_argument("--part-size", type=parse_size, help="bytes per part or chunk (default 64MiB)")


def _context() -> tuple[ClientSettings, Store]:
    from client.store_ops import settled_store

    return settled_store(lambda line: print(line, file=sys.stderr))


def _name(store: Store, settings: ClientSettings, text: str) -> ModelName:
    return store.parse_name(text, settings.default_host)


def _pull(args: argparse.Namespace) -> int:
    import asyncio

    from client.progress import ProgressView
    from client.pull import PullOptions, pull

    settings, store = _context()
    name = _name(store, settings, args.model)
    options = PullOptions(args.insecure, args.concurrency, args.part_size, args.max_rate)
    try:
        with ProgressView() as view:
            asyncio.run(pull(name, store, settings, options, view))
    except KeyboardInterrupt:
        print("\npull interrupted; run the same command again to resume where it stopped", file=sys.stderr)
        return 130
    return 0


def _push(args: argparse.Namespace) -> int:
    import asyncio

    from client.progress import ProgressView
    from client.push import PushOptions, push

    settings, store = _context()
    name = _name(store, settings, args.model)
    options = PushOptions(args.insecure, args.part_size, args.max_rate)
    try:
        with ProgressView() as view:
            asyncio.run(push(name, store, settings, options, view))
    except KeyboardInterrupt:
        print("\npush interrupted; run the same command again to resume where it stopped", file=sys.stderr)
        return 130
    return 0


def _list(args: argparse.Namespace) -> int:
    from client.progress import human_age, human_size, print_table

    _, store = _context()
    models = sorted(store.models(), key=lambda m: m.modified, reverse=True)
    rows = [("NAME", "ID", "SIZE", "MODIFIED")]
    now = time.time()
    for m in models:
        shown = m.name.display()
        if args.prefix and not shown.startswith(args.prefix):
            continue
        rows.append((shown, m.id[:12], human_size(m.size), human_age(now - m.modified)))
    print_table(rows)
    return 0


def _rm(args: argparse.Namespace) -> int:
    from client.store_ops import remove_models

    settings, store = _context()
    names = [_name(store, settings, m) for m in args.models]
    for name in names:
        store.get(name)  # every name must exist before anything is deleted
    removal = remove_models(store, names)
    for name in removal.models:
        print(f"deleted '{name.display()}'")
    return 0


def _cp(args: argparse.Namespace) -> int:
    from client.store_ops import copy_model

    settings, store = _context()
    source, destination = _name(store, settings, args.source), _name(store, settings, args.destination)
    copy_model(store, source, destination)
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def _show(args: argparse.Namespace) -> int:
    from client.model_info import inspect, render_modelfile
    from formats.description import parameter_lines

    settings, store = _context()
    model = store.get(_name(store, settings, args.model))
    info = inspect(store, model)
    if info.error:  # files that could not be read (see client.model_info): show what is known
        print(f"warning: {info.error}", file=sys.stderr)
    if args.modelfile:
        print(render_modelfile(info), end="")
    elif args.parameters:
        print("\n".join(parameter_lines(info.parameters)))
    elif args.template:
        print(info.template or "")
    elif args.system:
        print(info.system or "")
    elif args.license:
        print("\n".join(info.licenses))
    else:
        _print_summary(info, args.verbose)
    return 0


def _print_summary(info: ModelInfo, verbose: bool) -> None:
    def section(title: str, rows: list[tuple[str, str]] | list[str]) -> None:
        if not rows:
            return
        print(f"  {title}")
        for row in rows:
            print(f"    {row[0]:<20}{row[1]}" if isinstance(row, tuple) else f"    {row}")
        print()

    model_rows = [
        ("architecture", info.architecture),
        ("parameters", info.parameter_size),
        ("context length", str(info.arch_value("context_length") or "")),
        ("embedding length", str(info.arch_value("embedding_length") or "")),
        ("quantization", info.quantization),
    ]
    section("Model", [(k, v) for k, v in model_rows if v])
    section("Capabilities", info.capabilities)
    section("Parameters", _short_params(info))
    if info.system:
        section("System", info.system.strip().splitlines()[:5])
    for text in info.licenses:
        section("License", [line for line in text.strip().splitlines()[:2]])
    if verbose:
        section("Metadata", [(k, str(v)) for k, v in sorted(info.gguf.items())])


def _short_params(info: ModelInfo) -> list[str]:
    from formats.description import format_value

    return [f"{name:<14} {format_value(v)}" for name, value in info.parameters.items()
            for v in (value if isinstance(value, list) else [value])]  # fmt: skip


def _prune(args: argparse.Namespace) -> int:
    from client.progress import human_size
    from client.store_ops import plan_prune, prune
    from formats.units import parse_duration

    _, store = _context()
    plan = plan_prune(store, parse_duration(args.grace))
    shown = plan if args.dry_run else prune(store, plan)
    verb = "would free" if args.dry_run else "freed"
    for path, size in shown.blobs:
        print(f"{'would delete' if args.dry_run else 'deleted'} {path.name} ({human_size(size)}, unused)")
    for path, size in shown.partials:
        print(f"{'would delete' if args.dry_run else 'deleted'} {path.name} ({human_size(size)}, partial)")
    print(f"{verb} {human_size(shown.size)}: {len(shown.blobs)} unused blob(s), {len(shown.partials)} partial file(s)")
    return 0


def _fsck(args: argparse.Namespace) -> int:
    from client.fsck import fsck
    from formats.units import parse_duration

    _, store = _context()
    report = fsck(store, repair=args.repair, verify=not args.quick, grace=parse_duration(args.grace), on_problem=print)
    print(report.summary())
    return 0 if report.clean else 1


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from client.archive import export_model
    from client.progress import human_size

    settings, store = _context()
    name = _name(store, settings, args.model)
    size = export_model(store, name, Path(args.file))
    print(f"exported '{name.display()}' to {args.file} ({human_size(size)})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from client.archive import import_model
    from client.progress import human_size

    settings, store = _context()
    name = _name(store, settings, args.name) if args.name else None
    result = import_model(store, Path(args.file), name, force=args.force)
    print(f"imported '{result.name.display()}' ({result.blobs_added} new blob(s), {human_size(result.bytes_added)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # httpx imports its own command-line tool (click, pygments) with itself: ~40 ms on every
    # command that talks HTTP, for a tool hangar never runs. A module recorded as None cannot be
    # imported, and httpx then defines a stub in its place.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `hangar run MODEL --verbose some words`: words after an option still belong to the prompt.
    spill = getattr(args, "trailing_words", None)
    if extra and spill and not any(word.startswith("-") for word in extra):
        setattr(args, spill, [*getattr(args, spill), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except errors.HangarError as e:
        print(f"Error: {errors.printable(str(e), newlines=True)}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
