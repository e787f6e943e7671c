"""Store operations that need no registry: copy, remove, and what a removal frees."""

from __future__ import annotations

from dataclasses import dataclass, field

from client.store import LocalModel, Store
from registry.oci.digest import Digest
from registry.oci.names import ModelName


def copy_model(store: Store, source: ModelName, destination: ModelName) -> LocalModel:
    """Give a model a second name: the manifest is copied byte for byte, blobs are shared."""
    model = store.get(source)
    with store.lock("manifests"):
        store.put_manifest(destination, model.manifest.raw)
    return store.get(destination)


@dataclass
class Removal:
    models: list[ModelName] = field(default_factory=list)
    blobs: list[Digest] = field(default_factory=list)
    freed: int = 0


def remove_models(store: Store, names: list[ModelName]) -> Removal:
    """Delete the manifests, then every blob of theirs that no remaining model uses."""
    result = Removal()
    with store.lock("manifests"):
        candidates: set[Digest] = set()
        for name in names:
            model = store.get(name)
            candidates |= {d.digest for d in model.manifest.blobs()}
            store.delete_manifest(name)
            result.models.append(name)
        still_used = store.referenced_digests()
        for digest in sorted(candidates - still_used):
            path = store.blob_path(digest)
            try:
                result.freed += path.stat().st_size
            except FileNotFoundError:
                continue
            store.delete_blob(digest)
            result.blobs.append(digest)
    return result
