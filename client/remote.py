"""Questions to a registry that move no blobs: does a local model still match what its tag
points to (``hangar outdated``, ``hangar update``), and which tags does a repository have
(``hangar tags``).

A model is up to date when the registry's manifest for its tag has the digest of the manifest
in the store: the store keeps a pulled manifest byte for byte, so the two digests are equal
exactly when nothing was pushed to the tag since."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from client import errors
from client.config import ClientSettings
from client.credentials import pull_scope
from client.http import MANIFEST_ACCEPT, make_client, registry_url, send
from client.limits import MANIFEST_LIMIT, TAGS_MAX, TAGS_MAX_PAGES, TAGS_PAGE_LIMIT
from client.store import LocalModel
from formats.names import ModelName

CHECKS_AT_ONCE = 8  # manifest requests in flight per registry

UP_TO_DATE = "up to date"
OUTDATED = "update available"
NOT_IN_REGISTRY = "not in the registry"


@dataclass(frozen=True)
class UpdateCheck:
    """What the registry says of one local model."""

    name: ModelName
    local_id: str  # sha256 hex of the local manifest (the ID ``hangar list`` shows)
    remote_id: str | None = None  # the same for the registry's manifest; None if it has none
    error: str | None = None  # why the registry could not be asked

    @property
    def status(self) -> str:
        if self.error:
            return f"error: {self.error}"
        if self.remote_id is None:
            return NOT_IN_REGISTRY
        return UP_TO_DATE if self.remote_id == self.local_id else OUTDATED

    @property
    def outdated(self) -> bool:
        return self.error is None and self.remote_id is not None and self.remote_id != self.local_id


async def check_updates(
    models: Sequence[LocalModel], settings: ClientSettings, *, insecure: bool = False
) -> list[UpdateCheck]:
    """Ask each model's registry for the manifest digest of its tag, in the order given. A
    registry that cannot be asked (unreachable, refusing, TLS) marks its models with an error
    instead of failing the others."""
    by_base: dict[str, list[LocalModel]] = {}
    for model in models:
        by_base.setdefault(registry_url(model.name, settings, insecure), []).append(model)
    found: dict[ModelName, UpdateCheck] = {}

    async def ask_registry(base: str, local: list[LocalModel]) -> None:
        limit = asyncio.Semaphore(CHECKS_AT_ONCE)
        scopes = sorted({pull_scope(m.name.repository) for m in local})
        async with make_client(settings, base, scopes=scopes, connections=CHECKS_AT_ONCE) as http:

            async def ask(model: LocalModel) -> None:
                async with limit:
                    try:
                        remote = await remote_manifest_id(http, base, model.name)
                        found[model.name] = UpdateCheck(model.name, model.id, remote)
                    except errors.HangarError as e:
                        found[model.name] = UpdateCheck(model.name, model.id, error=str(e))

            await asyncio.gather(*(ask(m) for m in local))

    await asyncio.gather(*(ask_registry(base, local) for base, local in by_base.items()))
    return [found[m.name] for m in models]


async def remote_manifest_id(http: httpx.AsyncClient, base: str, name: ModelName) -> str | None:
    """The sha256 hex of the registry's manifest for ``name``'s tag, or None if it has none.
    HEAD first (registries send ``Docker-Content-Digest``); a GET, hashed here, where it is
    missing."""
    url = f"{base}/v2/{name.repository}/manifests/{name.tag}"
    what = f"check {name.display()}"
    headers = {"Accept": MANIFEST_ACCEPT}
    head = await send(http, "HEAD", url, headers=headers, what=what, allow=(404,))
    if head.status_code == 404:
        return None
    digest = str(head.headers.get("docker-content-digest", ""))
    if digest.startswith("sha256:") and len(digest) == 71:
        return digest.removeprefix("sha256:")
    response = await send(http, "GET", url, headers=headers, what=what, allow=(404,), limit=MANIFEST_LIMIT)
    return None if response.status_code == 404 else hashlib.sha256(response.content).hexdigest()


async def list_tags(
    name: ModelName, settings: ClientSettings, *, insecure: bool = False, page_size: int = 1000
) -> list[str]:
    """Every tag of ``name``'s repository, following the registry's pages (``Link: rel=next``)."""
    base = registry_url(name, settings, insecure)
    tags: list[str] = []
    url: str | None = f"{base}/v2/{name.repository}/tags/list?n={page_size}"
    async with make_client(settings, base, scopes=[pull_scope(name.repository)]) as http:
        seen: set[str] = set()
        while url:
            # A registry decides how many pages there are: a Link back to a page already read,
            # or more pages or tags than any repository has, is a loop, not a listing.
            if url in seen or len(seen) >= TAGS_MAX_PAGES or len(tags) > TAGS_MAX:
                why = "links back to a page already read" if url in seen else f"goes on past {len(seen)} pages"
                raise errors.ResponseRejected(f"list tags of {name.repository}: the registry's tag list {why}")
            seen.add(url)
            response = await send(http, "GET", url, what=f"list tags of {name.repository}", limit=TAGS_PAGE_LIMIT)
            try:
                page = response.json()
                tags.extend(str(tag) for tag in page.get("tags") or [])
            except (ValueError, AttributeError):
                raise errors.RequestFailed(
                    f"list tags of {name.repository}: the registry's answer is not a tag list", 502
                ) from None
            url = _next_page(response, url)
    return tags


def _next_page(response: httpx.Response, url: str) -> str | None:
    link = str(response.headers.get("link", ""))
    if 'rel="next"' not in link or "<" not in link:
        return None
    return urljoin(url, link[link.index("<") + 1 : link.index(">")])


# A registry's search answer (20 models a page) is a few KiB; more is not a search result.
SEARCH_LIMIT = 1 << 20


@dataclass
class SearchHit:
    name: str
    description: str
    capabilities: list[str]
    sizes: list[str]
    tags: int
    updated_at: str


async def search(
    host: str,
    query: str,
    settings: ClientSettings,
    *,
    capabilities: Sequence[str] = (),
    order: str = "newest",
    insecure: bool = False,
) -> list[SearchHit]:
    """The first page of a Hangar registry's ``GET /api/search`` (docs/web.md): the models whose
    name and description hold every word of ``query``, among those the user may read there.

    The search itself never challenges (anonymous visitors may search), so the user's credentials
    for the registry (this machine's key after ``hangar signin``, or a ``hangar login``) are
    turned into a token first, by the API's own ``GET /v2/`` challenge: with it the private
    models of the user and of their organisations are found too."""
    base = registry_url(ModelName.parse(f"{host}/library/search"), settings, insecure)
    params = [("q", query), ("o", order), *(("c", c) for c in capabilities)]
    async with make_client(settings, base, scopes=[]) as http:
        await send(http, "GET", f"{base}/v2/", what=f"search {host}", allow=(404,))
        response = await send(
            http, "GET", f"{base}/api/search", what=f"search {host}", limit=SEARCH_LIMIT, params=params
        )
    try:
        models = response.json()["models"]
        return [
            SearchHit(
                name=str(m["name"]),
                description=str(m.get("description") or ""),
                capabilities=[str(c) for c in m.get("capabilities") or []],
                sizes=[str(s) for s in m.get("sizes") or []],
                tags=int(m.get("tags") or 0),
                updated_at=str(m.get("updated_at") or ""),
            )
            for m in models
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise errors.RequestFailed(f"search {host}: the registry's answer is not a search result", 502) from None
