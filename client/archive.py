"""Moving models without a registry: ``hangar export`` writes a model as an OCI image layout in
a tar file, ``hangar import`` reads one (ours, or any with Docker v2 / OCI manifests) into the
store. The tar holds::

    oci-layout                      {"imageLayoutVersion": "1.0.0"}
    index.json                      the manifest's descriptor, annotated with the tag
                                    (``org.opencontainers.image.ref.name``) and the model's name
    blobs/sha256/<hex>              the manifest, the config and every layer

Ollama's manifests are Docker v2 (``application/vnd.docker.distribution.manifest.v2+json``), and
OCI tools look a tag up only among OCI descriptors (skopeo: "no descriptor found for reference"),
nor copy a Docker v2 manifest with Ollama's layer types. So a Docker v2 model is exported as an
OCI twin, the same config and layers under an OCI manifest, which ``index.json`` names; the
original manifest rides along as a blob named by an ``io.hangar.manifest.original`` annotation, and
import puts the original back (the digest the registry knows). ``skopeo copy
oci-archive:model.tar:latest docker://…`` copies the twin.

Import accepts our archives, the older ones whose descriptor is the Docker v2 manifest itself, and
any OCI layout tar whose ``ref.name`` is a tag (``latest``, as skopeo writes) or a full reference.
Blobs are streamed in and out (never held in memory) and verified on import before they enter the
store; the manifest is written last."""

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
ORIGINAL = "io.hangar.manifest.original"  # the digest of the Docker v2 manifest an OCI twin stands for
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
    annotations = {REF_NAME: name.tag, MODEL_NAME: str(name)}
    listed = manifest.raw  # the manifest index.json names
    if manifest.media_type == mt.DOCKER_MANIFEST:
        listed = oci_twin(manifest.raw)
        annotations[ORIGINAL] = str(manifest.digest)
    descriptor = {
        "mediaType": mt.OCI_MANIFEST if listed is not manifest.raw else manifest.media_type,
        "digest": str(Digest.of_bytes(listed)),
        "size": len(listed),
        "annotations": annotations,
    }
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [descriptor]}
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            _add_bytes(tar, "index.json", json.dumps(index, indent=2).encode())
            _add_bytes(tar, f"blobs/sha256/{manifest.digest.hex}", manifest.raw)
            if listed is not manifest.raw:
                _add_bytes(tar, f"blobs/sha256/{Digest.of_bytes(listed).hex}", listed)
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
        if not isinstance(entry, dict):
            raise errors.IntegrityError(f"{source} has an invalid entry in its index.json")
        annotations = entry.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise errors.IntegrityError(f"{source} has invalid annotations in its index.json")
        if name is None:
            name = _archive_name(source, annotations)
        try:
            raw = _manifest_member(tar, members, source, entry["digest"])
            manifest = Manifest.parse(raw, entry.get("mediaType"), default=mt.OCI_MANIFEST)
            if isinstance(original := annotations.get(ORIGINAL), str):
                raw, manifest = _original(tar, members, source, original, manifest)
        except (KeyError, TypeError, InvalidDigest, ManifestError) as e:
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


def oci_twin(raw: bytes) -> bytes:
    """A Docker v2 manifest as an OCI one: the same config and layers, only ``mediaType`` differs
    (OCI tools take other config and layer types as an artifact's)."""
    doc = json.loads(raw)
    doc["mediaType"] = mt.OCI_MANIFEST
    return json.dumps(doc, separators=(",", ":")).encode()


def _archive_name(source: Path, annotations: dict[str, object]) -> ModelName:
    """The name an archive gives its model: ours (``io.hangar.model.name``), else ``ref.name``,
    a full reference or a bare tag (then the model is named after the file: ``model.tar`` holding
    ``latest`` is ``model:latest``)."""
    full, ref = annotations.get(MODEL_NAME), annotations.get(REF_NAME)
    label = full if isinstance(full, str) and full else ref if isinstance(ref, str) and ref else None
    if label is None:
        raise errors.InvalidName(f"{source} does not name its model; give a name to import it as")
    if label is ref and "/" not in label and ":" not in label:
        stem = source.name.split(".", 1)[0].lower()
        label = f"{stem}:{label}"
    try:
        return ModelName.parse(label)
    except NameParseError as e:
        raise errors.InvalidName(
            f"{source} names its model {label!r}, which is not a model name ({e}); give a name"
        ) from None


def _manifest_member(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], source: Path, digest: object) -> bytes:
    """The manifest blob ``digest`` of the archive, checked against its digest."""
    manifest_digest = Digest.parse(str(digest))
    raw = _read_member(tar, members, f"blobs/sha256/{manifest_digest.hex}")
    if Digest.of_bytes(raw) != manifest_digest:
        raise errors.IntegrityError(f"the manifest in {source} does not match its digest")
    return raw


def _original(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], source: Path, digest: str, twin: Manifest
) -> tuple[bytes, Manifest]:
    """The Docker v2 manifest an OCI twin stands for, when it is the twin's exactly (same config
    and layers): the model keeps the digest its registry knows. Otherwise the twin itself."""
    if f"blobs/sha256/{Digest.parse(digest).hex}" not in members:
        return twin.raw, twin
    raw = _manifest_member(tar, members, source, digest)
    original = Manifest.parse(raw, None, default=mt.DOCKER_MANIFEST)
    if original.media_type != mt.DOCKER_MANIFEST or oci_twin(raw) != twin.raw:
        raise errors.IntegrityError(f"{source}: the original manifest {digest} does not match the one index.json names")
    return raw, original


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
