"""The registry's whole HTTP surface, in match order."""

from __future__ import annotations

import re

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from formats.errorcodes import DistributionError
from registry.api import accounts, blobs, listing, manifests, token, uploads
from registry.api.common import bearer_grant, services, unauthorized


class RepositoryConvertor(Convertor[str]):
    """A repository name of one or more ``/``-separated segments (OCI names have any depth; the
    handler checks the grammar and answers NAME_INVALID rather than a bare 404). The route's
    anchored suffix (``/manifests/<ref>``, ``/blobs/uploads/<id>`` …, whose parameters are one
    segment each) decides where the name ends, so ``a/b/c/manifests/v1`` names ``a/b/c``."""

    regex = "[^/]+(?:/[^/]+)*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("repo", RepositoryConvertor())

_REPO_ROUTE_RE = re.compile(r"/v2/(?P<name>.+?)/(?:manifests|blobs|tags|referrers|chunksums)/")


async def api_version(request: Request) -> Response:
    """200 for a client that may talk to us; with auth on, that takes a token (an anonymous one
    will do), and the 401 tells clients where to get one."""
    if services(request).settings.auth != "off" and await bearer_grant(request) is None:
        raise unauthorized(request)
    return JSONResponse({})


async def unmatched(request: Request) -> Response:
    """A /v2/ path that no route took: a method the path does not support, a repository name of
    the wrong shape, or nothing at all."""
    allowed = sorted(
        {m for route in routes[:-1] if route.matches(request.scope)[0] == Match.PARTIAL for m in route.methods or ()}
    )
    if allowed:
        raise DistributionError(
            "UNSUPPORTED", f"method {request.method} not allowed", headers={"Allow": ", ".join(allowed)}
        )
    m = _REPO_ROUTE_RE.match(request.url.path)
    if m:
        name = m.group("name")
        raise DistributionError("NAME_INVALID", f"invalid repository name {name!r}", detail={"name": name})
    raise DistributionError("UNSUPPORTED", "no such endpoint", status=404)


R = "/v2/{name:repo}"

routes = [
    Route("/token", token.token, methods=["GET"]),
    *accounts.routes,
    Route("/v2/", api_version, methods=["GET"]),
    Route("/v2/_catalog", listing.catalog, methods=["GET"]),
    Route(R + "/tags/list", listing.list_tags, methods=["GET"]),
    # HEAD before GET: Starlette lets a GET route answer HEAD too.
    Route(R + "/manifests/{reference}", manifests.head_manifest, methods=["HEAD"]),
    Route(R + "/manifests/{reference}", manifests.get_manifest, methods=["GET"]),
    Route(R + "/manifests/{reference}", manifests.put_manifest, methods=["PUT"]),
    Route(R + "/manifests/{reference}", manifests.delete_manifest, methods=["DELETE"]),
    Route(R + "/referrers/{digest}", manifests.list_referrers, methods=["GET"]),
    Route(R + "/chunksums/{digest}", blobs.chunk_sums, methods=["GET"]),
    Route(R + "/blobs/uploads/", uploads.start_upload, methods=["POST"]),
    Route(R + "/blobs/uploads", uploads.start_upload, methods=["POST"]),
    Route(R + "/blobs/uploads/{upload_id}", uploads.get_upload, methods=["GET"]),
    Route(R + "/blobs/uploads/{upload_id}", uploads.patch_upload, methods=["PATCH"]),
    Route(R + "/blobs/uploads/{upload_id}", uploads.finish_upload, methods=["PUT"]),
    Route(R + "/blobs/uploads/{upload_id}", uploads.cancel_upload, methods=["DELETE"]),
    Route(R + "/blobs/{digest}", blobs.head_blob, methods=["HEAD"]),
    Route(R + "/blobs/{digest}", blobs.get_blob, methods=["GET"]),
    Route(R + "/blobs/{digest}", blobs.delete_blob, methods=["DELETE"]),
    Route("/v2/{path:path}", unmatched, methods=["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]),
]
