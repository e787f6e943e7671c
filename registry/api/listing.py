"""Listings: ``/v2/<name>/tags/list`` and ``/v2/_catalog``, paginated with ``n``/``last`` and a
``Link: <…>; rel="next"`` header when more follow."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from formats.errorcodes import DistributionError
from registry.api.common import authorize, next_link, page_params, readable_namespaces, repository, services


async def list_tags(request: Request) -> Response:
    name = repository(request)
    await authorize(request, name, "pull")
    n, last = page_params(request)
    # One extra row tells whether another page follows.
    tags = await run_in_threadpool(services(request).meta.list_tags, name, n + 1, last)
    if tags is None:
        raise DistributionError("NAME_UNKNOWN", detail={"name": name})
    headers = {}
    more, tags = len(tags) > n, tags[:n]
    if more and tags:
        headers["Link"] = next_link(request.url.path, n, tags[-1])
    return JSONResponse({"name": name, "tags": tags}, headers=headers)


async def catalog(request: Request) -> Response:
    n, last = page_params(request)
    namespaces = await readable_namespaces(request)
    names = await run_in_threadpool(services(request).meta.list_repositories, n + 1, last, namespaces)
    headers = {}
    more, names = len(names) > n, names[:n]
    if more and names:
        headers["Link"] = next_link(request.url.path, n, names[-1])
    return JSONResponse({"repositories": names}, headers=headers)
