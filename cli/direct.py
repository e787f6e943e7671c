"""``hangar urls`` and ``hangar import-blobs``: hand a model's transfer to another tool (curl,
aria2c, a browser, a download manager, a USB stick) and take the result back, verified."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from client.config import load
from client.errors import printable
from client.progress import human_size
from client.store import Store


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    urls = commands.add_parser(
        "urls",
        help="print URLs an external downloader can fetch a model's blobs from",
        description="For each blob of MODEL in its registry, print a URL that curl, aria2c, a browser or a "
        "download manager can fetch without credentials until it expires (the registry's signed URLs, or "
        "its object store's presigned ones; a registry that has neither gets the blob URL itself, marked "
        "'needs credentials'), with its digest and size. Nothing is downloaded. Fetch the files into one "
        "folder under the names shown (sha256-<hex>), then 'hangar import-blobs FOLDER --from FILE' with "
        "the --json output completes the model; or 'hangar import-blobs FOLDER' then 'hangar pull MODEL' "
        "fetches only what is still missing.",
    )
    urls.add_argument("model", help="e.g. models.lan:5000/alice/model:tag")
    output = urls.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="everything as JSON, the manifest included (for import-blobs --from)"
    )
    output.add_argument(
        "--aria2",
        action="store_true",
        help="an input file for 'aria2c -i FILE': URL, file name and sha-256 checksum of each blob",
    )
    urls.add_argument("--insecure", action="store_true", help="use plain http for this registry")
    urls.set_defaults(handler=_urls)

    adopt = commands.add_parser(
        "import-blobs",
        help="verify files fetched by other tools and add them to the store",
        description="Hash every file in FOLDER and add to the store those that are blobs: files named by their "
        "digest (sha256-<hex>, sha256:<hex> or <hex>) whose bytes match it, or, with --from, any file whose "
        "sha256 is one of that model's blobs. A file whose bytes do not match its name is reported and never "
        "stored. With --from (the output of 'hangar urls --json'), the model is complete once all its blobs "
        "are in: its manifest is written, with the registry's ID, and no registry is contacted. The folder's "
        "files are cloned where the filesystem can (btrfs, XFS), else copied; they stay where they are.",
    )
    adopt.add_argument("folder", type=Path)
    adopt.add_argument("--from", dest="urls_file", type=Path, help="a 'hangar urls --json' file: complete that model")
    adopt.set_defaults(handler=_import_blobs)


def _urls(args: argparse.Namespace) -> int:
    import asyncio

    from client.direct import model_urls

    settings = load()
    name = Store(settings.models).parse_name(args.model, settings.default_host)
    found = asyncio.run(model_urls(name, settings, insecure=args.insecure))
    if args.json:
        print(json.dumps(found.to_json(), indent=2))
        return 0
    if args.aria2:
        for blob in found.blobs:
            print(blob.url)
            print(f"  out={blob.descriptor.digest.filename}")
            print(f"  checksum=sha-256={blob.descriptor.digest.hex}")
        return 0
    for blob in found.blobs:
        d = blob.descriptor
        until = "needs credentials" if blob.credentials_needed else _until(blob.expires)
        print(f"{d.digest}  {human_size(d.size):>9}  {printable(d.media_type)}  ({until})")
        print(f"  {printable(blob.url)}")
    return 0


def _until(expires: float | None) -> str:
    if expires is None:
        return "no credentials needed"
    minutes = max(0, int((expires - time.time()) // 60))
    return f"no credentials needed; expires in {minutes} min"


def _import_blobs(args: argparse.Namespace) -> int:
    from client.direct import adopt, read_urls_file

    if not args.folder.is_dir():
        print(f"Error: {args.folder} is not a folder", file=sys.stderr)
        return 1
    model = read_urls_file(args.urls_file) if args.urls_file else None
    store = Store(load().models).ensure()
    result = adopt(store, args.folder, model=model)
    for path, imported in result.imported:
        print(f"{imported.digest}  {human_size(imported.size):>9}  {path.name} ({imported.method})")
    for path, why in result.rejected:
        print(f"rejected {path.name}: {why}", file=sys.stderr)
    if result.completed is not None:
        print(f"{result.completed.display()} is complete")
    elif model is not None:
        print(f"{model[0].display()}: {len(result.missing)} blob(s) still missing:", file=sys.stderr)
        for d in result.missing:
            print(f"  {d.digest} ({human_size(d.size)})", file=sys.stderr)
    return 1 if result.rejected or (model is not None and result.completed is None) else 0
