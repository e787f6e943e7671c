"""``/v2/<name>/blobs/uploads/``: blob upload sessions.

- ``POST`` starts a session (202, absolute ``Location``), uploads a whole blob with
  ``?digest=`` (201), or mounts a blob from another repository with ``?mount=&from=`` (201).
  ``?digest=`` without a body (Ollama's tensor-model push) is 201 when this repository has the
  blob, else a new session (202).
- ``PATCH`` appends a chunk. ``Content-Range`` may be ``a-b`` (Ollama) or ``bytes=a-b``; a
  chunk must start where the upload ends, otherwise 416 with the ``Range`` we have. With
  ``X-Redirect-Uploads: 1`` on an object store, a 307 to a presigned URL for the chunk's part
  (the body, if any, is not read); a ``POST`` that asks with the same header is told with it
  that this store does that.
- ``GET`` reports the ``Range`` received so far (204), so an interrupted upload resumes.
- ``PUT ?digest=`` appends an optional last chunk, verifies and publishes the blob (201).
- ``DELETE`` cancels the session.

Session state lives in the database (owner repository, times) and in the blob store (bytes),
never in process memory, so any worker or replica can take the next request. Two requests that
write one session at once (a client's retry on another replica while the first still runs) would
interleave their parts in an object store: on one, each takes the session row's writer lease first
(``Metadata.lease_upload``, renewed while it streams), and the second is answered 416 with the
``Range`` we have, which clients take as "ask again where to continue".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from formats.digest import Digest
from formats.errorcodes import DistributionError
from formats.names import NameParseError, parse_registry_repository
from registry.api.common import (
    authorize,
    content_length,
    digest_param,
    external_url,
    has_body,
    repository,
    services,
)
from registry.db import utcnow
from registry.mirror.hooks import refuse_mirrored_push
from registry.renewal import renewed
from registry.storage import DigestMismatch, EtagMismatch, SizeMismatch, put_blob

# The one digest an empty monolithic upload can have.
EMPTY_DIGEST = Digest.of_bytes(b"")
_CONTENT_RANGE_RE = re.compile(r"(?:bytes[= ])?(\d+)-(\d+)(?:/(?:\d+|\*))?")
# A writer renews its lease every third of this: a replica killed mid-chunk holds the session
# for at most this long, and the client's retries (1, 2, 4 … s apart) outlast it.
LEASE_SECONDS = 10.0


def parse_content_range(header: str) -> tuple[int, int]:
    """``(first, last)`` inclusive from ``a-b``, ``bytes=a-b`` or ``bytes a-b/total``."""
    m = _CONTENT_RANGE_RE.fullmatch(header.strip())
    if m is None or int(m.group(2)) < int(m.group(1)):
        raise DistributionError("RANGE_INVALID", f"invalid Content-Range {header!r}")
    return int(m.group(1)), int(m.group(2))


def _session_path(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def progress_headers(request: Request, name: str, upload_id: str, size: int) -> dict[str, str]:
    location = external_url(request, _session_path(name, upload_id))
    return {
        "Location": location,
        "Docker-Upload-Location": location,
        "Docker-Upload-UUID": upload_id,
        # Distribution's convention ("0-0" also when empty); Upload-Offset is unambiguous.
        "Range": f"0-{max(size - 1, 0)}",
        "Upload-Offset": str(size),
        "Content-Length": "0",
    }


def _created(request: Request, name: str, digest: Digest) -> Response:
    return Response(
        status_code=201,
        headers={
            "Location": external_url(request, f"/v2/{name}/blobs/{digest}"),
            "Docker-Content-Digest": str(digest),
            "Content-Length": "0",
        },
    )


async def _session(request: Request, name: str) -> str:
    upload_id: str = request.path_params["upload_id"]
    await authorize(request, name, "push")
    svc = services(request)
    if await run_in_threadpool(svc.meta.get_upload, name, upload_id) is None:
        raise DistributionError("BLOB_UPLOAD_UNKNOWN", detail={"upload": upload_id})
    return upload_id


async def _append(request: Request, name: str, upload_id: str) -> int:
    """Append the request body at the declared (or current) offset; the new size. The store's
    errors (an offset that is not the end, a short or long body) become OCI errors in registry.app."""
    svc = services(request)
    size = await svc.store.upload_size(upload_id)
    length = content_length(request)
    offset = size
    raw_range = request.headers.get("content-range")
    if raw_range:
        first, last = parse_content_range(raw_range)
        if length is not None and length != last - first + 1:
            raise DistributionError(
                "RANGE_INVALID", f"Content-Range {raw_range!r} does not match Content-Length {length}"
            )
        offset, length = first, last - first + 1
    return await svc.store.append_upload(upload_id, offset, _body(request), length)


@contextlib.asynccontextmanager
async def _writing(request: Request, name: str, upload_id: str) -> AsyncIterator[None]:
    """Hold the session's writer lease for the duration; 416 (with the ``Range`` the store has)
    while another request holds it. Giving it back leaves ``updated_at`` at now, as a write should.
    A store that keeps appends apart itself (a file lock) needs none: its lock dies with a killed
    process, where a lease lasts until it runs out."""
    svc = services(request)
    if svc.store.exclusive_appends:
        yield
        await run_in_threadpool(svc.meta.touch_upload, upload_id)
        return

    def lease_until() -> dt.datetime:
        return utcnow() + dt.timedelta(seconds=LEASE_SECONDS)

    held = lease_until()
    if not await run_in_threadpool(svc.meta.lease_upload, upload_id, None, held):
        size = await svc.store.upload_size(upload_id)
        headers = progress_headers(request, name, upload_id, size)
        del headers["Content-Length"]
        headers["Retry-After"] = "1"
        raise DistributionError(
            "RANGE_INVALID", "another request is writing to this upload: ask where it ends, then continue",
            detail={"upload": upload_id}, headers=headers,
        )  # fmt: skip

    async def renew() -> bool:
        nonlocal held
        until = lease_until()
        if not await run_in_threadpool(svc.meta.lease_upload, upload_id, held, until):
            return False  # lost (this process stalled past it): the store's offset checks remain
        held = until
        return True

    try:
        async with renewed(renew, LEASE_SECONDS / 3):
            yield
    finally:
        await run_in_threadpool(svc.meta.lease_upload, upload_id, held, utcnow())


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def start_upload(request: Request) -> Response:
    name = repository(request)
    principal = await authorize(request, name, "push")
    await refuse_mirrored_push(request, name)
    svc = services(request)
    query = request.query_params

    if "mount" in query:
        digest = digest_param(query["mount"])
        source = query.get("from", "")
        try:
            parse_registry_repository(source)
            readable = svc.settings.auth == "off" or "pull" in await run_in_threadpool(
                svc.authority.allowed, principal, source
            )
        except NameParseError:
            readable = False  # not mountable: fall through to a normal upload session, as the spec says
        if readable and await run_in_threadpool(svc.meta.mount_blob, name, source, digest) is not None:
            return _created(request, name, digest)

    if "digest" in query and not has_body(request) and digest_param(query["digest"]) != EMPTY_DIGEST:
        # Ollama's tensor-model push (protocol spec §7.5): ``?digest=`` with no body asks "have
        # you got it? else give me a session" (``X-Redirect-Uploads: 2``, ``X-Content-Length``).
        # Never the empty monolithic upload it looks like, which could only fail the digest.
        # "Got it" means linked into this repository: elsewhere would let anyone who knows a
        # digest link a blob they cannot read.
        digest = digest_param(query["digest"])
        if await run_in_threadpool(svc.meta.blob_size, name, digest) is not None:
            return _created(request, name, digest)
        # No X-Direct-Upload-URL (there is no object store to hand out): the client falls back
        # to PATCHing the session and committing it with PUT ?digest=.
    elif "digest" in query:  # monolithic upload
        digest = digest_param(query["digest"])
        upload_id = str(uuid.uuid4())
        info = await put_blob(svc.store, upload_id, digest, _body(request), content_length(request))
        await run_in_threadpool(svc.meta.link_blob, name, info)
        return _created(request, name, digest)

    upload_id = str(uuid.uuid4())
    await svc.store.start_upload(upload_id)
    await run_in_threadpool(svc.meta.start_upload, name, upload_id)
    headers = progress_headers(request, name, upload_id, 0)
    if request.headers.get("x-redirect-uploads") == "1" and svc.settings.redirect == "on" and svc.store.part_urls:
        headers["X-Redirect-Uploads"] = "1"  # PATCH with the same header: parts go to the store
    return Response(status_code=202, headers=headers)


async def patch_upload(request: Request) -> Response:
    name = repository(request)
    upload_id = await _session(request, name)
    redirected = await _redirect_part(request, name, upload_id)
    if redirected is not None:
        return redirected
    async with _writing(request, name, upload_id):
        size = await _append(request, name, upload_id)
    return Response(status_code=202, headers=progress_headers(request, name, upload_id, size))


async def _redirect_part(request: Request, name: str, upload_id: str) -> Response | None:
    """Ollama's ``X-Redirect-Uploads: 1`` (protocol spec §7.3): on an object store, a 307 to a
    presigned URL for this chunk's part, where the client PUTs the bytes itself (and, through
    ``Docker-Upload-Location``, the session URL for its next chunk at once, so that several parts
    travel in parallel). The body of this PATCH is left unread. None: take the bytes here."""
    raw_range = request.headers.get("content-range")
    svc = services(request)
    if request.headers.get("x-redirect-uploads") != "1" or not raw_range or svc.settings.redirect != "on":
        return None
    first, last = parse_content_range(raw_range)
    url = await svc.store.part_url(upload_id, first, last - first + 1, svc.settings.signed_url_ttl)
    if url is None:
        return None
    await run_in_threadpool(svc.meta.touch_upload, upload_id)
    headers = progress_headers(request, name, upload_id, last + 1)
    headers["Location"] = url  # the part's URL; Docker-Upload-Location stays the session's
    return Response(status_code=307, headers=headers)


async def get_upload(request: Request) -> Response:
    name = repository(request)
    upload_id = await _session(request, name)
    size = await services(request).store.upload_size(upload_id)
    return Response(status_code=204, headers=progress_headers(request, name, upload_id, size))


async def finish_upload(request: Request) -> Response:
    name = repository(request)
    upload_id = await _session(request, name)
    if "digest" not in request.query_params:
        raise DistributionError("DIGEST_INVALID", "the digest query parameter is required")
    digest = digest_param(request.query_params["digest"])
    svc = services(request)
    async with _writing(request, name, upload_id):
        if has_body(request):
            await _append(request, name, upload_id)
        try:
            # The client's etag (the S3 multipart ETag of its parts) is checked where they went to the store.
            info = await svc.store.commit_upload(upload_id, digest, etag=request.query_params.get("etag"))
        except (DigestMismatch, SizeMismatch, EtagMismatch):
            await run_in_threadpool(svc.meta.delete_upload, upload_id)  # the store discarded its bytes
            raise
        await run_in_threadpool(svc.meta.finish_upload, name, upload_id, info)
    return _created(request, name, digest)


async def cancel_upload(request: Request) -> Response:
    name = repository(request)
    upload_id = await _session(request, name)
    svc = services(request)
    await svc.store.abort_upload(upload_id)
    await run_in_threadpool(svc.meta.delete_upload, upload_id)
    return Response(status_code=204, headers={"Content-Length": "0"})
