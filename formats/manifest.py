"""Manifests and descriptors: strict parsing of what clients push, and building the
compact form that Ollama writes.

The raw bytes of a manifest are its identity (the digest is taken over them), so a parsed
:class:`Manifest` keeps them and never re-serialises a pushed manifest."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from formats import mediatypes as mt
from formats.digest import Digest, InvalidDigest

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# RFC 6838 type/subtype (with +suffix and parameters-free), at most 255 characters.
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


class ManifestError(ValueError):
    """A manifest that is not valid JSON or does not follow its schema."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    # Keys beyond the three above, as pushed: Ollama's "from"/"name", OCI "annotations",
    # "artifactType", "urls", "platform".
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: object, where: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: descriptor must be an object")
        media_type = obj.get("mediaType")
        if not isinstance(media_type, str) or not is_media_type(media_type):
            raise ManifestError(f"{where}: mediaType must be a media type such as application/octet-stream")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where}: size must be a non-negative integer")
        raw_digest = obj.get("digest")
        if not isinstance(raw_digest, str):
            raise ManifestError(f"{where}: digest must be a string")
        try:
            digest = Digest.parse(raw_digest)
        except InvalidDigest as e:
            raise ManifestError(f"{where}: {e}") from None
        extra = {k: v for k, v in obj.items() if k not in ("mediaType", "digest", "size")}
        return cls(media_type, digest, size, extra)

    @property
    def artifact_type(self) -> str | None:
        value = self.extra.get("artifactType")
        return value if isinstance(value, str) else None

    @property
    def parent(self) -> str | None:
        """Ollama's ``from``: the model this layer was inherited from."""
        value = self.extra.get("from")
        return value if isinstance(value, str) and value else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    raw: bytes
    media_type: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]  # an index's children
    subject: Descriptor | None
    artifact_type: str | None
    annotations: Mapping[str, str]

    @property
    def digest(self) -> Digest:
        return Digest.of_bytes(self.raw)

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEX_MANIFESTS

    def blobs(self) -> Iterator[Descriptor]:
        """The blobs this manifest needs in its repository: config, then layers."""
        if self.config is not None:
            yield self.config
        yield from self.layers

    def effective_artifact_type(self) -> str | None:
        """What the referrers API reports: ``artifactType``, else the config media type."""
        if self.artifact_type:
            return self.artifact_type
        return self.config.media_type if self.config is not None else None

    @classmethod
    def parse(cls, raw: bytes, content_type: str | None = None, *, default: str | None = None) -> Manifest:
        """``default``: the media type when neither the document nor ``content_type`` names one
        (a store that holds only images says so, rather than have an image with a stray
        ``manifests`` key read back as an index); without it, the keys decide."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(raw)} bytes; the limit is {MAX_MANIFEST_BYTES}")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as e:  # also bad UTF-8, absurd numbers, deep nesting
            raise ManifestError(f"manifest is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise ManifestError("manifest must be a JSON object")
        if doc.get("schemaVersion") != 2:
            raise ManifestError("schemaVersion must be 2")
        media_type = _media_type(doc, content_type, default)
        is_index = media_type in mt.INDEX_MANIFESTS

        config = None
        layers: tuple[Descriptor, ...] = ()
        children: tuple[Descriptor, ...] = ()
        if is_index:
            children = _descriptor_list(doc, "manifests")
        else:
            if "config" not in doc:
                raise ManifestError("config is required")
            config = Descriptor.parse(doc["config"], "config")
            layers = _descriptor_list(doc, "layers")
        subject = Descriptor.parse(doc["subject"], "subject") if doc.get("subject") is not None else None
        artifact_type = doc.get("artifactType")
        if artifact_type is not None and (not isinstance(artifact_type, str) or not is_media_type(artifact_type)):
            raise ManifestError("artifactType must be a media type")
        annotations = doc.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise ManifestError("annotations must map strings to strings")
        return cls(raw, media_type, config, layers, children, subject, artifact_type, annotations)

    @classmethod
    def build(
        cls,
        config: Descriptor,
        layers: Iterable[Descriptor],
        media_type: str = mt.DOCKER_MANIFEST,
    ) -> Manifest:
        """A new manifest in Ollama's compact form (key order as Ollama writes it)."""
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
        return cls.parse(json.dumps(doc, separators=(",", ":")).encode(), media_type)


def is_media_type(text: str) -> bool:
    return _MEDIA_TYPE_RE.fullmatch(text) is not None


def _media_type(doc: dict[str, Any], content_type: str | None, default: str | None = None) -> str:
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestError("mediaType must be a string")
    ctype = (content_type or "").split(";")[0].strip() or None
    if ctype == "application/json":  # generic clients; trust the document
        ctype = None
    if declared and ctype and declared != ctype:
        raise ManifestError(f"mediaType {declared!r} does not match Content-Type {ctype!r}")
    media_type = declared or ctype or default or (mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST)
    if media_type not in mt.ALL_MANIFESTS:
        raise ManifestError(f"unsupported manifest media type {media_type!r}")
    return media_type


def _descriptor_list(doc: dict[str, Any], key: str) -> tuple[Descriptor, ...]:
    items = doc.get(key, [])
    if not isinstance(items, list):
        raise ManifestError(f"{key} must be an array")
    return tuple(Descriptor.parse(item, f"{key}[{i}]") for i, item in enumerate(items))
