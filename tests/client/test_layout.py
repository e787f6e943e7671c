"""export to an OCI layout tar, import into an empty store."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from client import errors
from client.archive import export_model, import_model
from client.config import load
from client.store import Store
from formats.names import ModelName
from tests.client.conftest import make_model


def test_export_then_import_into_an_empty_store(store: Store, tmp_path: Path) -> None:
    name = make_model(store, "models.lan:5000/team/model:v2")
    archive = tmp_path / "model.tar"
    size = export_model(store, name, archive)
    assert size == archive.stat().st_size
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    model = store.get(name)
    assert {"oci-layout", "index.json", f"blobs/sha256/{model.manifest.digest.hex}"} <= names
    assert {f"blobs/sha256/{d.digest.hex}" for d in model.manifest.blobs()} <= names
    assert index["manifests"][0]["annotations"]["io.hangar.model.name"] == "models.lan:5000/team/model:v2"

    other = Store(load({"HANGAR_HOME": str(tmp_path / "airgapped")}).models)
    result = import_model(other, archive)
    assert result.name == name and result.blobs_added == 3
    copy = other.get(name)
    assert copy.manifest.raw == model.manifest.raw
    for desc in model.manifest.blobs():
        assert other.blob_path(desc.digest).read_bytes() == store.blob_path(desc.digest).read_bytes()
    # Importing again adds nothing; under another name shares the blobs.
    assert import_model(other, archive, ModelName.parse("renamed")).blobs_added == 0


def test_import_refuses_damaged_archives(store: Store, tmp_path: Path) -> None:
    name = make_model(store, "m")
    archive = tmp_path / "m.tar"
    export_model(store, name, archive)
    weights = store.get(name).manifest.layers[0].digest.hex
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(archive) as src, tarfile.open(damaged, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == f"blobs/sha256/{weights}":
                data = data[:-1] + bytes([data[-1] ^ 1])
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            import io

            dst.addfile(info, io.BytesIO(data))
    target = Store(load({"HANGAR_HOME": str(tmp_path / "t")}).models)
    with pytest.raises(errors.IntegrityError, match="damaged"):
        import_model(target, damaged)
    with pytest.raises(errors.ModelNotFound):
        target.get(name)
    assert not target.has_blob(store.get(name).manifest.layers[0].digest)
    with pytest.raises(errors.IntegrityError, match="not a readable tar"):
        import_model(target, tmp_path / "missing.tar")
