from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from client.config import ClientSettings, load
from client.store import Store
from formats import mediatypes as mt
from formats.manifest import Descriptor, Manifest
from formats.names import ModelName


@pytest.fixture
def settings(tmp_path: Path) -> ClientSettings:
    return load({"HANGAR_HOME": str(tmp_path / "home")})


@pytest.fixture
def store(settings: ClientSettings) -> Store:
    return Store(settings.models).ensure()


def make_model(store: Store, name: str, weights: bytes | None = None, *, parent: str | None = None) -> ModelName:
    """A model in the store: config, a model layer (random unless given) and a template."""
    model_name = ModelName.parse(name)
    extra = {"from": parent} if parent else {}
    w, wn = store.add_blob_bytes(weights if weights is not None else os.urandom(200_000))
    t, tn = store.add_blob_bytes(b"{{ .Prompt }}")
    c, cn = store.add_blob_bytes(json.dumps({"model_format": "gguf", "name": name}).encode())
    manifest = Manifest.build(
        Descriptor(mt.DOCKER_CONFIG, c, cn),
        [Descriptor(mt.OLLAMA_MODEL, w, wn, extra), Descriptor(mt.OLLAMA_TEMPLATE, t, tn)],
    )
    store.put_manifest(model_name, manifest.raw)
    return model_name
