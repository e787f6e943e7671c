"""``hangar create NAME [-f Modelfile] [-q TYPE]``: read a Modelfile, gather the files it names, and
make the model: through the runtime's ``/api/create`` when ``hangar serve`` is running (files are
uploaded to it first, as Ollama's CLI does), or straight into the local store when it is not."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import errors
from client.config import load
from client.create import CreateError, CreateRequest, create, quantize_type
from client.progress import Progress, ProgressCallback, ProgressView
from client.store import Store
from formats.digest import Digest
from formats.modelfile import Modelfile, decode, parse

UNSUPPORTED_PATTERNS = ("pytorch_model*.bin", "consolidated*.pth")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "create",
        help="create a model from a Modelfile",
        description="Create NAME from a Modelfile (-f, default ./Modelfile; without one, FROM the current "
        "folder). FROM names a model (pulled if missing) or a GGUF file or folder; further FROM lines add "
        "vision projectors; ADAPTER adds a LoRA adapter GGUF; TEMPLATE, SYSTEM, PARAMETER, MESSAGE, LICENSE, "
        "REQUIRES, RENDERER and PARSER as in Ollama. Paths are relative to the Modelfile.",
    )
    p.add_argument("name")
    p.add_argument("-f", "--file", help="the Modelfile (default: ./Modelfile)")
    p.add_argument(
        "-q",
        "--quantize",
        metavar="TYPE",
        help="quantize an F32/F16/BF16 model: q4_0 q4_1 q5_0 q5_1 q8_0 q3_K_S q3_K_M q3_K_L q4_K_S q4_K_M "
        "q5_K_S q5_K_M q6_K (case-insensitive)",
    )
    p.add_argument("--insecure", action="store_true", help="plain http if FROM must be pulled")
    p.add_argument(
        "--link",
        action="store_true",
        help="hard-link local files into the store instead of cloning or copying them: no second copy on any "
        "filesystem, but the model then IS your file: edit or rewrite it and the model stops loading until "
        "created again (without --link, filesystems with copy-on-write clones, btrfs and XFS, share the "
        "file's blocks safely, and others copy it)",
    )
    p.set_defaults(handler=_create)


@dataclass
class Gathered:
    """The Modelfile's request, with its local files still as paths."""

    modelfile: Modelfile
    base: str | None
    files: dict[str, Path]
    adapters: dict[str, Path]


def gather(modelfile_path: Path | None) -> Gathered:
    if modelfile_path is None:
        default = Path("Modelfile")
        text, directory = (decode(default.read_bytes()), Path.cwd()) if default.exists() else ("FROM .", Path.cwd())
    else:
        try:
            text = decode(modelfile_path.read_bytes())  # UTF-8, or UTF-16 with a byte-order mark
        except FileNotFoundError:
            raise CreateError(f"no Modelfile at {modelfile_path}") from None
        directory = modelfile_path.resolve().parent
    modelfile = parse(text)
    files: dict[str, Path] = {}
    base: str | None = None
    for i, source in enumerate([modelfile.base, *modelfile.projectors]):
        path = _local(source, directory)
        if path is None:
            if i == 0:
                base = source
                continue
            raise CreateError(f"FROM {source}: no such file (a second FROM must be a projector file)")
        for found in _model_files(path):
            # A sentence-transformers module's files keep their folder: 1_Pooling/config.json.
            name = found.name if found.parent == path or not path.is_dir() else found.relative_to(path).as_posix()
            files[name if name not in files else str(found)] = found
    adapters: dict[str, Path] = {}
    for source in modelfile.adapters:
        path = _local(source, directory)
        if path is None:
            raise CreateError(f"ADAPTER {source}: no such file")
        adapters.update({found.name: found for found in _model_files(path)})
    for source in modelfile.drafts:
        raise CreateError(f"DRAFT {source}: draft models are not supported yet")
    return Gathered(modelfile, base, files, adapters)


def _local(source: str, directory: Path) -> Path | None:
    """The path a FROM/ADAPTER value names, if it exists (else it is a model name)."""
    expanded = Path(os.path.expanduser(source))
    path = expanded if expanded.is_absolute() else directory / expanded
    return path if path.exists() else None


def _model_files(path: Path) -> list[Path]:
    """The files a FROM/ADAPTER path stands for: itself, a folder's safetensors checkpoint (weights,
    config and tokenizer files) or PEFT adapter, or a folder's GGUF files."""
    from client.create import CHECKPOINT_FILES, SENTENCE_TRANSFORMERS_FILES, module_files

    if path.is_file():
        return [path]
    if any(path.glob("*.safetensors")):
        found = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.safetensors.index.json"))
        names = (*CHECKPOINT_FILES, *SENTENCE_TRANSFORMERS_FILES, "adapter_config.json")
        found += [path / name for name in names if (path / name).is_file()]
        return found + module_files(path)
    for pattern in UNSUPPORTED_PATTERNS:
        if any(path.glob(pattern)):
            raise CreateError(f"{path}: PyTorch pickles are not imported (they can run code); use safetensors")
    found = sorted(path.glob("*.gguf"))
    if not found:
        raise CreateError(f"{path}: no GGUF or safetensors files in this folder")
    return found


def _create(args: argparse.Namespace) -> int:
    from cli.runtime import _alive, _headers, daemon_url

    if args.quantize:
        quantize_type(args.quantize)
    gathered = gather(Path(args.file) if args.file else None)
    for warning in gathered.modelfile.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    base = daemon_url()
    with ProgressView() as view:
        view(Progress("gathering model components"))
        if _alive(base):
            _create_remote(base, _headers(), args, gathered, view)
        else:
            _create_local(args, gathered, view)
    return 0


def _request(
    args: argparse.Namespace, gathered: Gathered, files: dict[str, Digest], adapters: dict[str, Digest]
) -> CreateRequest:
    m = gathered.modelfile
    return CreateRequest(
        name=args.name,
        base=gathered.base,
        files=files,
        adapters=adapters,
        template=m.template,
        system=m.system,
        licenses=m.licenses,
        parameters=m.parameters,
        messages=m.messages,
        requires=m.requires,
        renderer=m.renderer,
        parser=m.parser,
        quantize=args.quantize,
        insecure=args.insecure,
    )


def _create_local(args: argparse.Namespace, gathered: Gathered, progress: ProgressCallback) -> None:
    settings = load()
    store = Store(settings.models).ensure()

    def copy(paths: dict[str, Path]) -> dict[str, Digest]:
        return {name: _import(store, path, args.link, progress) for name, path in paths.items()}

    create(store, settings, _request(args, gathered, copy(gathered.files), copy(gathered.adapters)), progress)


# The status line says how each file became a blob (Ollama's own line for a copy).
IMPORT_STATUS = {"copied": "copying file", "cloned": "cloning file (copy-on-write)", "linked": "linking file",
                 "present": "using already stored file"}  # fmt: skip


def _import(store: Store, path: Path, link: bool, progress: ProgressCallback) -> Digest:
    try:
        imported = store.import_file(path, link=link)
    except OSError as e:
        raise CreateError(f"{e.strerror}: {e.filename}" if e.filename else (e.strerror or str(e))) from None
    status = f"{IMPORT_STATUS[imported.method]} {imported.digest}"
    progress(Progress(status, str(imported.digest), imported.size, imported.size))
    return imported.digest


def _create_remote(
    base: str, headers: dict[str, str], args: argparse.Namespace, gathered: Gathered, progress: ProgressCallback
) -> None:
    import httpx  # here: every hangar command builds this module's parser

    with httpx.Client(base_url=base, headers=headers, timeout=None) as client:
        # --link with a daemon on this machine: link into the store first; when the daemon uses
        # the same store it then finds every blob there and nothing is uploaded.
        store = Store(load().models).ensure() if args.link else None

        def upload(paths: dict[str, Path]) -> dict[str, Digest]:
            out = {}
            for name, path in paths.items():
                digest = _import(store, path, True, progress) if store is not None else _sha256(path)
                size = path.stat().st_size
                if client.head(f"/api/blobs/{digest}").status_code != 200:
                    r = client.post(f"/api/blobs/{digest}", content=_chunks(path, progress, str(digest), size))
                    if r.status_code >= 400:
                        raise errors.RequestFailed(f"uploading {path}: {errors.response_text(r)}", r.status_code)
                progress(Progress(f"copying file {digest}", str(digest), size, size))
                out[name] = digest
            return out

        request = _request(args, gathered, upload(gathered.files), upload(gathered.adapters))
        body: dict[str, Any] = {
            "model": request.name,
            "files": {k: str(v) for k, v in request.files.items()},
            "adapters": {k: str(v) for k, v in request.adapters.items()},
            "license": request.licenses,
            "parameters": request.parameters,
            "messages": request.messages,
            "insecure": request.insecure,
            "stream": True,
        }
        for key in ("template", "system", "requires", "renderer", "parser", "quantize"):
            if getattr(request, key) is not None:
                body[key] = getattr(request, key)
        if request.base:
            body["from"] = request.base
        with client.stream("POST", "/api/create", json=body) as r:
            if r.status_code >= 400:
                r.read()
                raise CreateError(errors.response_text(r))
            for line in r.iter_lines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if "error" in item:
                    raise CreateError(str(item["error"]))
                progress(Progress(item.get("status", ""), item.get("digest"), item.get("total"), item.get("completed")))


def _sha256(path: Path) -> Digest:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return Digest(h.hexdigest())


def _chunks(path: Path, progress: ProgressCallback, digest: str, size: int) -> Iterator[bytes]:
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            done += len(chunk)
            progress(Progress(f"copying file {digest}", digest, size, done))
            yield chunk
