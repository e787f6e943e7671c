"""``/v2/<name>/manifests/<reference>``: GET, HEAD, PUT and DELETE by tag or digest, and the
OCI 1.1 referrers API (``/v2/<name>/referrers/<digest>``).

Manifests are stored and served byte for byte with the media type they were pushed with, to
clients whose ``Accept`` takes that type (``acceptable``); others get 404 MANIFEST_UNKNOWN."""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from formats import mediatypes as mt
from formats.digest import Digest
from formats.errorcodes import DistributionError
from formats.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError
from registry.api.common import audit, authorize, digest_param, external_url, reference_param, repository, services
from registry.meta import MissingReferences, SizeConflict, StoredManifest
from registry.mirror.hooks import mirror_headers, mirror_manifest, refuse_mirrored_push
from registry.web.catalog import summarize_pushed


def acceptable(request: Request, media_type: str) -> bool:
    """Whether the request's ``Accept`` takes a manifest of ``media_type``: it names that type,
    or ``*/*`` / ``application/*``, or there is no ``Accept`` at all (``q`` values ignored, as
    distribution ignores them)."""
    values = [v.split(";", 1)[0].strip().lower() for h in request.headers.getlist("accept") for v in h.split(",")]
    values = [v for v in values if v]
    return not values or any(v in (media_type.lower(), "*/*", "application/*") for v in values)


async def _lookup(request: Request) -> StoredManifest:
    name = repository(request)
    reference = reference_param(request.path_params["reference"])
    await authorize(request, name, "pull")
    svc = services(request)
    stored = await mirror_manifest(request, name, str(reference))
    stored = stored or await run_in_threadpool(svc.meta.get_manifest, name, str(reference))
    if stored is None:
        if not await run_in_threadpool(svc.meta.repository_exists, name):
            raise DistributionError("NAME_UNKNOWN", detail={"name": name})
        raise DistributionError("MANIFEST_UNKNOWN", detail={"reference": str(reference)})
    if not acceptable(request, stored.media_type):
        # As distribution answers a client that cannot read what is stored (it never converts).
        raise DistributionError(
            "MANIFEST_UNKNOWN",
            f"manifest of type {stored.media_type} found, but the Accept header does not take it",
            detail={"reference": str(reference), "mediaType": stored.media_type},
        )
    return stored


def _headers(stored: StoredManifest) -> dict[str, str]:
    return {
        "Content-Type": stored.media_type,
        "Content-Length": str(len(stored.content)),
        "Docker-Content-Digest": stored.digest,
        "ETag": f'"{stored.digest}"',
    }


async def get_manifest(request: Request) -> Response:
    stored = await _lookup(request)
    reference = request.path_params["reference"]
    if ":" not in reference:  # a pull by tag (a digest GET is a client's second look, or an index's child)
        services(request).pulls.add(request.path_params["name"], reference)
    return Response(stored.content, headers={**_headers(stored), **mirror_headers(request)})


async def head_manifest(request: Request) -> Response:
    stored = await _lookup(request)
    return Response(headers={**_headers(stored), **mirror_headers(request)})


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = DistributionError(
        "SIZE_INVALID", f"manifest exceeds the {limit // (1024 * 1024)} MiB limit", status=413
    )
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:
        raise DistributionError("MANIFEST_INVALID", "the request body ended early") from None
    return bytes(body)


async def put_manifest(request: Request) -> Response:
    name = repository(request)
    reference = reference_param(request.path_params["reference"])
    principal = await authorize(request, name, "push")
    await refuse_mirrored_push(request, name)
    raw = await _read_limited(request, MAX_MANIFEST_BYTES)
    try:
        manifest = Manifest.parse(raw, request.headers.get("content-type"))
    except ManifestError as e:
        raise DistributionError("MANIFEST_INVALID", str(e)) from None
    digest = manifest.digest
    if isinstance(reference, Digest) and reference != digest:
        raise DistributionError(
            "DIGEST_INVALID", f"manifest digest is {digest}, not {reference}", detail={"digest": str(reference)}
        )
    tag = reference if isinstance(reference, str) else None
    try:
        await run_in_threadpool(services(request).meta.put_manifest, name, manifest, tag)
    except MissingReferences as e:
        raise DistributionError("MANIFEST_BLOB_UNKNOWN", detail={"digests": e.digests}) from None
    except SizeConflict as e:
        raise DistributionError("MANIFEST_INVALID", str(e), detail={"digest": e.digest}) from None
    if tag is not None:  # what the web site lists and searches: read from the blobs once, now
        await summarize_pushed(services(request).meta, services(request).store, name, manifest.raw)
    headers = {
        "Location": external_url(request, f"/v2/{name}/manifests/{digest}"),
        "Docker-Content-Digest": str(digest),
        "Content-Length": "0",
    }
    if manifest.subject is not None:
        headers["OCI-Subject"] = str(manifest.subject.digest)
    await audit(request, principal.actor, "push", f"{name}:{tag or digest}", "ok", digest=str(digest))
    return Response(status_code=201, headers=headers)


async def delete_manifest(request: Request) -> Response:
    """By digest: the manifest and its tags. By tag: only the tag."""
    name = repository(request)
    reference = reference_param(request.path_params["reference"])
    principal = await authorize(request, name, "delete")
    meta = services(request).meta
    if isinstance(reference, Digest):
        deleted = await run_in_threadpool(meta.delete_manifest, name, reference)
    else:
        deleted = await run_in_threadpool(meta.delete_tag, name, reference)
    if not deleted:
        if not await run_in_threadpool(meta.repository_exists, name):
            raise DistributionError("NAME_UNKNOWN", detail={"name": name})
        raise DistributionError("MANIFEST_UNKNOWN", detail={"reference": str(reference)})
    target = f"{name}@{reference}" if isinstance(reference, Digest) else f"{name}:{reference}"
    await audit(request, principal.actor, "delete", target, "ok", kind="manifest")
    return Response(status_code=202, headers={"Content-Length": "0"})


async def list_referrers(request: Request) -> Response:
    """An image index of the manifests whose ``subject`` is ``digest`` (never a 404)."""
    name = repository(request)
    subject = digest_param(request.path_params["digest"])
    await authorize(request, name, "pull")
    artifact_type = request.query_params.get("artifactType") or None
    rows = await run_in_threadpool(services(request).meta.referrers, name, subject, artifact_type)
    descriptors = []
    for row in rows:
        descriptor: dict[str, object] = {"mediaType": row.media_type, "digest": row.digest, "size": len(row.content)}
        if row.artifact_type:
            descriptor["artifactType"] = row.artifact_type
        annotations = Manifest.parse(row.content, row.media_type).annotations
        if annotations:
            descriptor["annotations"] = dict(annotations)
        descriptors.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}
    headers = {"Content-Type": mt.OCI_INDEX}
    if artifact_type:
        headers["OCI-Filters-Applied"] = "artifactType"
    return Response(json.dumps(index).encode(), headers=headers)
