"""The calls the registry's handlers make into the mirror, each a no-op where the registry has no
``--upstream``: one line in each handler, so the handlers stay about the registry's own API."""

from __future__ import annotations

from starlette.requests import Request

from formats.digest import Digest
from registry.meta import StoredManifest
from registry.mirror.service import Mirror, MirrorBlob


def mirror_of(request: Request) -> Mirror | None:
    mirror: Mirror | None = getattr(request.app.state, "mirror", None)
    return mirror


async def mirror_manifest(request: Request, name: str, reference: str) -> StoredManifest | None:
    """The manifest of a mirrored name (its headers kept for ``mirror_headers``), or None: serve
    it from the registry's own repositories."""
    mirror = mirror_of(request)
    if mirror is None:
        return None
    found = await mirror.manifest(name, reference)
    if found is None:
        return None
    request.state.mirror_headers = found[1]
    return found[0]


def mirror_headers(request: Request) -> dict[str, str]:
    """Where a mirrored manifest came from and how (``X-Hangar-Upstream``, ``X-Hangar-Mirror``)."""
    headers: dict[str, str] = getattr(request.state, "mirror_headers", {})
    return headers


async def mirror_blob(request: Request, name: str, digest: Digest) -> MirrorBlob | None:
    """A blob on its way from the upstream, or None: serve it from the store as usual."""
    mirror = mirror_of(request)
    return None if mirror is None else await mirror.blob(name, digest)


async def refuse_mirrored_push(request: Request, name: str) -> None:
    """DENIED for a push into a namespace an upstream serves."""
    mirror = mirror_of(request)
    if mirror is not None:
        await mirror.refuse_push(name)
