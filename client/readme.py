"""A local model's README (``hangar readme``): a Markdown layer of media type
``application/vnd.hangar.image.readme`` in its manifest, so that it travels with the model (push,
pull, copy, export) as its template or licence do, and a Hangar registry's web site renders it on
the model page (docs/web.md). Ollama and other OCI clients keep and copy the layer without
reading it."""

from __future__ import annotations

import json

from client.store import LocalModel, Store
from client.store_ops import delete_unused_blobs
from formats import mediatypes as mt
from formats.manifest import Descriptor, Manifest
from formats.names import ModelName

MAX_README = 256 * 1024  # what a Hangar registry shows of one


class ReadmeError(Exception):
    """A README that cannot be set (too large, not UTF-8)."""


def readme_of(store: Store, name: ModelName) -> str | None:
    """The model's README, or None when it has none."""
    model = store.get(name)
    layer = next((d for d in model.manifest.layers if d.media_type == mt.HANGAR_README), None)
    if layer is None:
        return None
    return store.blob_path(layer.digest).read_bytes().decode("utf-8", errors="replace")


def set_readme(store: Store, name: ModelName, text: str | None) -> LocalModel:
    """Give the model ``text`` as its README (None: remove it): a new manifest under the same
    name, with the README as its last layer in place of any other; the blob of a README no
    model uses any more is deleted."""
    store.get(name)  # the model exists (ModelNotFound) before anything is added to the store
    layer: Descriptor | None = None
    if text is not None:
        data = text.encode("utf-8")
        if len(data) > MAX_README:
            raise ReadmeError(f"the README is {len(data)} bytes; a registry shows at most {MAX_README}")
        if not data.strip():
            raise ReadmeError("the README is empty (use --remove to remove it)")
        digest, size = store.add_blob_bytes(data)
        layer = Descriptor(mt.HANGAR_README, digest, size)
    with store.lock("manifests"):
        model = store.get(name)
        old = [d for d in model.manifest.layers if d.media_type == mt.HANGAR_README]
        doc = json.loads(model.manifest.raw)
        # Every other field of the manifest (annotations, media type, key order) stays as it was.
        doc["layers"] = [d for d in doc.get("layers", []) if d.get("mediaType") != mt.HANGAR_README]
        if layer is not None:
            doc["layers"].append(layer.to_json())
        raw = json.dumps(doc, separators=(",", ":")).encode()
        Manifest.parse(raw, default=model.manifest.media_type)  # still a manifest we can read
        store.put_manifest(name, raw)
        delete_unused_blobs(store, {d.digest for d in old} - ({layer.digest} if layer else set()))
    return store.get(name)
