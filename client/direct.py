"""Transfers by other tools: the time-limited URLs an external downloader (curl, aria2c, a
browser) can fetch a model's blobs from without credentials, and adopting the files it fetched
(or that came by sneakernet) into the store, verified, so that a model is complete without a
second download."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

from client import errors
from client.config import ClientSettings
from client.credentials import pull_scope, refuse_downgrade
from client.http import get_model_manifest, make_client, registry_url, send
from client.store import ImportedBlob, Store
from formats.digest import Digest, InvalidDigest
from formats.manifest import Descriptor, Manifest, ManifestError
from formats.names import ModelName

MAX_REDIRECTS = 10
URLS_FORMAT = 1  # the "format" of `hangar urls --json`; `import-blobs --from` checks it


@dataclass(frozen=True)
class BlobUrl:
    descriptor: Descriptor
    url: str
    credentials_needed: bool  # the registry served the blob itself: no self-authorising URL
    expires: float | None  # unix time, where the URL says


@dataclass
class ModelUrls:
    name: ModelName
    manifest_raw: bytes
    blobs: list[BlobUrl] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """What ``hangar import-blobs --from`` reads back: the manifest's exact bytes included,
        so the model it completes has the same ID as the registry's."""
        return {
            "format": URLS_FORMAT,
            "name": str(self.name),
            "manifest": base64.b64encode(self.manifest_raw).decode(),
            "blobs": [
                {
                    "digest": str(b.descriptor.digest),
                    "size": b.descriptor.size,
                    "mediaType": b.descriptor.media_type,
                    "url": b.url,
                    "file": b.descriptor.digest.filename,
                    "credentials_needed": b.credentials_needed,
                    "expires": b.expires,
                }
                for b in self.blobs
            ],
        }


async def model_urls(name: ModelName, settings: ClientSettings, *, insecure: bool = False) -> ModelUrls:
    """The manifest of ``name`` and, for each of its blobs, the URL the registry sends clients
    to: its own signed URL, or an object store's presigned one (a ``Location`` reached without
    credentials), else the blob URL itself (then marked as needing credentials)."""
    base = registry_url(name, settings, insecure)
    async with make_client(settings, base, scopes=[pull_scope(name.repository)]) as http:
        manifest = await get_model_manifest(http, base, name, "get the model's manifest")
        raw = manifest.raw
        result = ModelUrls(name, raw)
        ordered = [*manifest.layers, *([manifest.config] if manifest.config else [])]
        for desc in {d.digest: d for d in ordered}.values():
            result.blobs.append(await _blob_url(http, base, name, desc))
    return result


async def _blob_url(http: httpx.AsyncClient, base: str, name: ModelName, desc: Descriptor) -> BlobUrl:
    url = f"{base}/v2/{name.repository}/blobs/{desc.digest}"
    redirected = False
    for _ in range(MAX_REDIRECTS):
        # One byte is asked for and the answer closed unread: nothing is downloaded here.
        response = await send(http, "GET", url, headers={"Range": "bytes=0-0"}, stream=True, what=desc.digest.short)
        await response.aclose()
        location = response.headers.get("location")
        if response.is_redirect and location:
            target = response.url.join(location)
            refuse_downgrade(base, target, f"follow the registry for {desc.digest.short}")
            url, redirected = str(target), True
            continue
        if location:  # 200/206 with a Location: a self-authorising direct URL (Ollama's dialect)
            url, redirected = str(response.url.join(location)), True
        return BlobUrl(desc, url, not redirected, _expiry(url))
    raise errors.RequestFailed(f"{desc.digest.short}: too many redirects", 310)


def _expiry(url: str) -> float | None:
    """When a signed URL stops working: Hangar's ``expires=`` (unix seconds), or S3's
    ``X-Amz-Date`` + ``X-Amz-Expires``; None when the URL does not say."""
    query = {k.lower(): v[0] for k, v in parse_qs(httpx.URL(url).query.decode()).items()}
    try:
        if "expires" in query:
            return float(query["expires"])
        if "x-amz-date" in query and "x-amz-expires" in query:
            start = time.mktime(time.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ")) - time.timezone
            return start + float(query["x-amz-expires"])
    except ValueError:
        return None
    return None


@dataclass
class Adopted:
    """What ``adopt`` did with each file of the folder."""

    imported: list[tuple[Path, ImportedBlob]] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)
    ignored: list[Path] = field(default_factory=list)  # not a blob the model (if given) needs
    missing: list[Descriptor] = field(default_factory=list)  # blobs of the model still absent
    completed: ModelName | None = None  # the model whose manifest was written


def read_urls_file(path: Path) -> tuple[ModelName, bytes, Manifest]:
    """The model a ``hangar urls --json`` file describes: its name, manifest bytes and manifest."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != URLS_FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {URLS_FORMAT}")
        raw = base64.b64decode(data["manifest"], validate=True)
        return ModelName.parse(str(data["name"])), raw, Manifest.parse(raw)
    except (OSError, ValueError, KeyError, TypeError, ManifestError) as e:
        raise errors.HangarError(f"{path}: not a file written by 'hangar urls --json' ({e})") from None


def adopt(
    store: Store,
    folder: Path,
    *,
    model: tuple[ModelName, bytes, Manifest] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Adopted:
    """Hash every file in ``folder`` and make those that are blobs part of the store (cloned
    where the filesystem can, else copied; the folder is left as it is).

    A file counts as a blob when its sha256 matches the digest in its name (``sha256-<hex>``,
    ``sha256:<hex>`` or ``<hex>``, as downloaders save them), or, given ``model``, when its
    sha256 is one of the model's blobs whatever its name. A named file whose bytes do not match
    is rejected (a broken download), never stored. With ``model``, once every blob is in the
    store, the manifest is written: the model is complete, with the registry's own ID."""
    result = Adopted()
    wanted = {}
    if model is not None:
        _, _, manifest = model
        wanted = {d.digest: d for d in [*manifest.layers, *([manifest.config] if manifest.config else [])]}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        named = _digest_in_name(path.name)
        if named is None and not wanted:
            result.ignored.append(path)
            continue
        if named is not None and wanted and named not in wanted:
            result.ignored.append(path)
            continue
        progress(f"verifying {path.name}")
        imported = store.import_file(path)
        if named is not None and imported.digest != named:
            result.rejected.append((path, f"its sha256 is {imported.digest}, not the {named} its name says"))
            _drop_if_unused(store, imported)
            continue
        if wanted and imported.digest not in wanted:
            result.ignored.append(path)
            _drop_if_unused(store, imported)
            continue
        if wanted and wanted[imported.digest].size != imported.size:
            result.rejected.append((path, f"{imported.size} bytes, the manifest says {wanted[imported.digest].size}"))
            _drop_if_unused(store, imported)
            continue
        result.imported.append((path, imported))
    if model is not None:
        name, raw, _ = model
        result.missing = [d for d in wanted.values() if not store.has_blob(d.digest, d.size)]
        if not result.missing:
            store.put_manifest(name, raw)
            result.completed = name
    return result


def _digest_in_name(filename: str) -> Digest | None:
    stem = filename.removesuffix(".bin")
    for prefix in ("sha256-", "sha256:", "sha256_"):
        stem = stem.removeprefix(prefix)
    try:
        return Digest.parse(f"sha256:{stem}")
    except (InvalidDigest, ValueError):
        return None


def _drop_if_unused(store: Store, imported: ImportedBlob) -> None:
    """Remove a blob this adoption just added that nothing wants (it was not there before)."""
    if imported.method != "present" and imported.digest not in store.referenced_digests():
        store.delete_blob(imported.digest)
