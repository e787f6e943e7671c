"""``/v2/<name>/blobs/<digest>``: HEAD, GET (with Range) and DELETE.

Every GET carries a ``Location`` naming a URL that serves the same bytes, Range included, with no
credentials until it expires: the Ollama client resolves that URL once and downloads its parts
from it. The URL names who it was issued to (``registry.signing``); each use checks that they may
still read the repository, so making it private or removing a member closes it within seconds.
A store that can hand out its own URL (an object store) gets a 307 to that URL instead.
"""

from __future__ import annotations

import re

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from formats.digest import Digest
from formats.errorcodes import DistributionError
from registry.api.common import audit, authorize, digest_param, external_url, repository, services
from registry.auth import ANONYMOUS, Principal
from registry.mirror.hooks import mirror_blob
from registry.storage import CHUNK_SIZE, BlobInfo, ContentHash

_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str, size: int) -> tuple[int, int]:
    """``(first, last)`` inclusive for a single ``bytes=`` range; DistributionError 416 otherwise."""
    m = _RANGE_RE.fullmatch(header.strip())
    unsatisfiable = DistributionError(
        "RANGE_INVALID",
        f"range {header!r} not satisfiable for {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if m is None or (not m.group(1) and not m.group(2)):
        raise unsatisfiable
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        raise unsatisfiable
    return first, min(last, size - 1)


async def _blob_size(request: Request, name: str, digest: Digest) -> int:
    svc = services(request)
    size = await run_in_threadpool(svc.meta.blob_size, name, digest)
    if size is None:
        if not await run_in_threadpool(svc.meta.repository_exists, name):
            raise DistributionError("NAME_UNKNOWN", detail={"name": name})
        raise DistributionError("BLOB_UNKNOWN", detail={"digest": str(digest)})
    return size


def subject_of(principal: Principal) -> str:
    """How a signed URL names the principal it was issued to (``registry.signing``)."""
    if principal.kind == "user" and principal.account_id is not None:
        return f"u{principal.account_id}"
    if principal.kind == "robot":
        return f"r{principal.name}"
    return "a"  # anonymous: the repository must stay public


async def _subject_principal(request: Request, subject: str) -> Principal | None:
    """The principal a signed URL was issued to, as it stands now (None: gone or disabled)."""
    accounts = services(request).accounts
    if subject == "a":
        return ANONYMOUS
    if subject.startswith("u") and subject[1:].isdigit():
        user = await run_in_threadpool(accounts.get_by_id, int(subject[1:]))
        if user is None or user.disabled or user.kind != "user":
            return None
        return Principal("user", user.name, user.id, user.is_admin)
    if subject.startswith("r"):
        robot = await run_in_threadpool(accounts.robot_named, subject[1:])
        if robot is None:
            return None
        return Principal("robot", robot.username, robot_namespace=robot.namespace, robot_scope=robot.scope)
    return None


async def _may_still_read(request: Request, name: str, subject: str) -> bool:
    svc = services(request)
    if svc.settings.auth == "off":
        return True
    key = (subject, name.lower())
    cached = svc.url_access.get(key)
    if cached is not None:
        return bool(cached)
    principal = await _subject_principal(request, subject)
    allowed = principal is not None and "pull" in await run_in_threadpool(svc.authority.allowed, principal, name)
    svc.url_access.set(key, allowed)
    return allowed


async def _signed_request(request: Request, name: str) -> bool:
    """True for a valid signed URL whose subject may still read ``name``; a bad or expired
    signature, or a subject that lost access, is refused outright (and audited)."""
    query = request.query_params
    if "signature" not in query:
        return False
    subject = query.get("sub", "")
    reason = None
    if not services(request).signer.verify(request.url.path, query.get("expires", ""), query["signature"], subject):
        reason = "invalid or expired signature"
    elif not await _may_still_read(request, name, subject):
        reason = "the URL's holder may no longer read this repository"
    if reason is not None:
        await audit(request, "unknown", "signed-url", request.url.path, "denied", reason=reason, subject=subject)
        raise DistributionError("DENIED", "the signed URL is invalid or has expired")
    return True


def signed_blob_url(request: Request, name: str, digest: Digest, principal: Principal) -> str:
    """A URL that serves the blob without credentials to whoever holds it, for as long as
    ``principal`` may read ``name`` and at most ``--signed-url-ttl`` seconds."""
    svc = services(request)
    path = f"/v2/{name}/blobs/{digest}"
    return external_url(request, path, svc.signer.sign(path, svc.settings.signed_url_ttl, subject_of(principal)))


def _headers(digest: Digest, size: int) -> dict[str, str]:
    return {
        "Content-Length": str(size),
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
    }


async def _direct_url(request: Request, digest: Digest) -> str | None:
    """The store's own URL for a blob (presigned, on an object store) unless ``--redirect off``."""
    svc = services(request)
    if svc.settings.redirect != "on":
        return None
    return await svc.store.redirect_url(digest, svc.settings.signed_url_ttl)


async def head_blob(request: Request) -> Response:
    name, digest = repository(request), digest_param(request.path_params["digest"])
    if not await _signed_request(request, name):
        await authorize(request, name, "pull")
    fetching = await mirror_blob(request, name, digest)  # a mirrored blob not cached yet
    size = fetching.size if fetching else await _blob_size(request, name, digest)
    return Response(headers=_headers(digest, size))


async def get_blob(request: Request) -> Response:
    name, digest = repository(request), digest_param(request.path_params["digest"])
    signed = await _signed_request(request, name)
    principal = ANONYMOUS
    if not signed:
        principal = await authorize(request, name, "pull")
    svc = services(request)
    fetching = await mirror_blob(request, name, digest)  # a mirrored blob on its way from upstream
    size = fetching.size if fetching else await _blob_size(request, name, digest)
    read = fetching.read if fetching else svc.store.read
    headers = _headers(digest, size)
    # An object store serves the bytes itself, from a presigned URL: a 307 there, also for our own
    # signed URL (whose holder was just re-checked), so the bytes never cross the registry.
    direct = None if fetching else await _direct_url(request, digest)
    if direct is not None:
        return RedirectResponse(direct, status_code=307, headers={"Docker-Content-Digest": str(digest)})
    if not signed:
        headers["Location"] = signed_blob_url(request, name, digest, principal)

    range_header = request.headers.get("range")
    if range_header is None:
        return StreamingResponse(read(digest), headers=headers)
    first, last = parse_range(range_header, size)
    headers["Content-Length"] = str(last - first + 1)
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return StreamingResponse(read(digest, first, last - first + 1), status_code=206, headers=headers)


async def chunk_sums(request: Request) -> Response:
    """``GET /v2/<name>/chunksums/<digest>``: the sha256 of each chunk of a blob, one line each,
    ``sha256:<hex> <first>-<last>`` (inclusive byte offsets, contiguous, covering the blob), with
    ``Content-Location`` naming the signed URL to fetch the chunks from. Clients verify each chunk
    as it arrives, so a bad byte costs one chunk, not the blob."""
    name, digest = repository(request), digest_param(request.path_params["digest"])
    principal = await authorize(request, name, "pull")
    svc = services(request)
    found = await run_in_threadpool(svc.meta.chunks, name, digest)
    if found is None:
        await _blob_size(request, name, digest)  # raises the right 404
        raise DistributionError("BLOB_UNKNOWN", detail={"digest": str(digest)})
    size, sums = found
    if sums is None:  # a blob stored before chunk sums existed: compute them once
        content = ContentHash()
        async for data in svc.store.read(digest):
            await run_in_threadpool(content.update, data)
        if content.digest() != digest:
            raise DistributionError("UNKNOWN", f"stored blob {digest} does not match its digest")
        sums = list(content.chunk_sums())
        await run_in_threadpool(svc.meta.set_chunks, BlobInfo(digest, size, tuple(sums)))
    lines = []
    for i, value in enumerate(sums):
        first = i * CHUNK_SIZE
        lines.append(f"sha256:{value} {first}-{min(size, first + CHUNK_SIZE) - 1}\n")
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Location": await _direct_url(request, digest) or signed_blob_url(request, name, digest, principal),
        "Docker-Content-Digest": str(digest),
    }
    return Response("".join(lines).encode(), headers=headers)


async def delete_blob(request: Request) -> Response:
    """Unlink the blob from this repository; its bytes go when nothing else uses them (gc)."""
    name, digest = repository(request), digest_param(request.path_params["digest"])
    principal = await authorize(request, name, "delete")
    svc = services(request)
    if not await run_in_threadpool(svc.meta.unlink_blob, name, digest):
        await _blob_size(request, name, digest)  # raises the right 404
    await audit(request, principal.actor, "delete", f"{name}@{digest}", "ok", kind="blob")
    return Response(status_code=202, headers={"Docker-Content-Digest": str(digest), "Content-Length": "0"})
