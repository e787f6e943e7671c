"""Moving models without a registry: ``hangar export`` writes a model as an OCI image layout in
a tar file, ``hangar import`` reads one (ours, or any with Docker v2 / OCI manifests) into the
store. The tar holds::

    oci-layout                      {"imageLayoutVersion": "1.0.0"}
    index.json                      the manifest's descriptor, annotated with the model's name
    blobs/sha256/<hex>              the manifest, the config and every layer

Blobs are streamed in and out (never held in memory) and verified on import before they enter the
store; the manifest is written last. ``skopeo copy oci-archive:model.tar docker://…`` reads the
same file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from client import errors
from client.limits import check_blob_size, check_free_space
from client.store import Store
from formats import mediatypes as mt
from formats.digest import Digest, InvalidDigest
from formats.manifest import Descriptor, Manifest, ManifestError
from formats.names import ModelName, NameParseError

REF_NAME = "org.opencontainers.image.ref.name"
MODEL_NAME = "io.hangar.model.name"  # the full host/namespace/model:tag
COPY_CHUNK = 4 * 1024 * 1024


@dataclass
class Imported:
    name: ModelName
    blobs_added: int
    bytes_added: int


def export_model(store: Store, name: ModelName, target: Path) -> int:
    """Write ``name`` as an OCI layout tar at ``target`` (atomically); returns its size."""
    model = store.get(name)
    manifest = model.manifest
    descriptor = {
        "mediaType": manifest.media_type,
        "digest": str(manifest.digest),
        "size": len(manifest.raw),
        "annotations": {REF_NAME: name.tag, MODEL_NAME: str(name)},
    }
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [descriptor]}
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            _add_bytes(tar, "index.json", json.dumps(index, indent=2).encode())
            _add_bytes(tar, f"blobs/sha256/{manifest.digest.hex}", manifest.raw)
            seen = set()
            for desc in manifest.blobs():
                if desc.digest in seen:
                    continue
                seen.add(desc.digest)
                path = store.blob_path(desc.digest)
                if not store.has_blob(desc.digest, desc.size):
                    raise errors.IntegrityError(f"blob {desc.digest} of {name.display()} is missing from the store")
                tar.add(path, arcname=f"blobs/sha256/{desc.digest.hex}", recursive=False, filter=_plain)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target.stat().st_size


def import_model(store: Store, source: Path, name: ModelName | None = None, *, force: bool = False) -> Imported:
    """Read the (first) model of an OCI layout tar into the store, verifying every blob.

    An archive names its own model, so it could name one the user already trusts: a different
    model already stored under the name is replaced only with ``force`` (the same manifest is a
    no-op). Each blob is read no further than the size its manifest declares."""
    store.ensure()
    with _open_tar(source) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        index = _json_member(tar, members, "index.json")
        entries = index.get("manifests") if isinstance(index, dict) else None
        if not entries:
            raise errors.IntegrityError(f"{source} has no manifests in its index.json")
        entry = entries[0]
        annotations = entry.get("annotations") or {}
        if name is None:
            label = annotations.get(MODEL_NAME) or annotations.get(REF_NAME)
            if not label:
                raise errors.InvalidName(f"{source} does not name its model; give a name to import it as")
            try:
                name = ModelName.parse(label if MODEL_NAME in annotations else f"imported/{label}")
            except NameParseError as e:
                raise errors.InvalidName(str(e)) from None
        try:
            manifest_digest = Digest.parse(entry["digest"])
            raw = _read_member(tar, members, f"blobs/sha256/{manifest_digest.hex}")
            if Digest.of_bytes(raw) != manifest_digest:
                raise errors.IntegrityError(f"the manifest in {source} does not match its digest")
            manifest = Manifest.parse(raw, entry.get("mediaType"), default=mt.OCI_MANIFEST)
        except (KeyError, InvalidDigest, ManifestError) as e:
            raise errors.IntegrityError(f"{source} holds an invalid manifest: {e}") from None
        if manifest.is_index:
            raise errors.IntegrityError(f"{source} holds a multi-platform index; Hangar imports single models")
        _refuse_replacing(store, name, raw, force)
        missing = {d.digest: d for d in manifest.blobs() if not store.has_blob(d.digest, d.size)}
        for desc in missing.values():
            check_blob_size(desc.size, f"import {source}: blob {desc.digest.short}")
        check_free_space(store.blobs_dir, sum(d.size for d in missing.values()), f"import {source}")
        found = []
        for desc in missing.values():  # every member checked before any is copied
            member = members.get(f"blobs/sha256/{desc.digest.hex}")
            if member is None:
                raise errors.IntegrityError(f"{source} lacks blob {desc.digest}")
            if member.size != desc.size:
                raise errors.IntegrityError(
                    f"blob {desc.digest} in {source} is {member.size} bytes; its manifest says {desc.size}"
                )
            found.append((member, desc))
        added = size = 0
        for member, desc in found:
            _copy_verified(store, tar, member, desc)
            added += 1
            size += desc.size
        with store.lock("manifests"):
            _refuse_replacing(store, name, raw, force)  # again: another process may have imported meanwhile
            store.put_manifest(name, raw)
    return Imported(name, added, size)


def _refuse_replacing(store: Store, name: ModelName, raw: bytes, force: bool) -> None:
    try:
        existing = store.manifest_path(name).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return
    if existing != raw and not force:
        raise errors.HangarError(
            f"a different model named '{name.display()}' is already in the store; import it under another "
            "name, or pass --force to replace it"
        )


def _open_tar(source: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(source, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise errors.IntegrityError(f"{source} is not a readable tar file: {e}") from None


def _copy_verified(store: Store, tar: tarfile.TarFile, member: tarfile.TarInfo, desc: Descriptor) -> None:
    """Copy a blob's member into the store, reading no more than its declared size."""
    digest = desc.digest
    source = tar.extractfile(member)
    if source is None:
        raise errors.IntegrityError(f"cannot read {member.name}")
    h = hashlib.sha256()
    left = desc.size
    with store.temp_file() as (tmp, out):
        while left and (chunk := source.read(min(COPY_CHUNK, left))):
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
        if h.hexdigest() != digest.hex:
            raise errors.IntegrityError(f"blob {digest} in the archive is damaged (sha256 {h.hexdigest()})")
        store.publish_blob(tmp, digest)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def _read_member(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> bytes:
    member = members.get(name)
    f = tar.extractfile(member) if member is not None else None
    if f is None:
        raise errors.IntegrityError(f"the archive has no {name}")
    if member is not None and member.size > 16 * 1024 * 1024:
        raise errors.IntegrityError(f"{name} in the archive is too large")
    return f.read()


def _json_member(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> object:
    try:
        return json.loads(_read_member(tar, members, name))
    except ValueError:
        raise errors.IntegrityError(f"{name} in the archive is not JSON") from None
