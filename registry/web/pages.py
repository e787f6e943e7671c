"""The registry's web site (issue #11): server-rendered pages at ollama.com's URL shapes, on the
registry's own port, from the same database.

======================================  ==============================================================
``/``                                   search box, the newest models the viewer may read
``/search?q=&c=&o=&page=``              search by words of the name and description, capability
                                        (``c``, repeatable, all must match) and order
``/api/search?q=&c=&o=&page=``          the same as JSON (docs/web.md)
``/{namespace}``                        a user's or organisation's models (``?q=`` filters)
``/{namespace}/{model}``                the model page (``/library/{model}`` for one-part names)
``/{namespace}/{model}/tags``           every tag
``/{namespace}/{model}:{tag}``          one tag: its layers and the Modelfile that recreates it
``/{namespace}/{model}:{tag}/blobs/{hex}``  one layer (12 or more hex digits of its digest), text in full
``/static/…``                           the stylesheet and the copy-button script
======================================  ==============================================================

Pages are rendered for the anonymous viewer, for the holder of a registry bearer token sent
with ``Authorization``, or for a signed-in browser (``registry.web.sessions``; the account pages
are ``registry.web.account_pages``). What a viewer may read is decided by the API's own rules
(``registry.auth.Authority.allowed`` for one repository, ``registry.api.common.readable_namespaces``
for listings): what they may not read answers 404, exactly like a name that does not exist.

The site is its own Starlette app, mounted last, with its own error handling: a missing page is
an HTML 404, while every path under the API's roots keeps the distribution error envelope."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from formats.errorcodes import DistributionError
from formats.names import DEFAULT_NAMESPACE, is_valid_model, is_valid_namespace, is_valid_tag
from registry.api.common import base_url, bearer_grant, readable_namespaces, services
from registry.auth import ANONYMOUS, Principal
from registry.web import render, sessions
from registry.web.cards import Card, card
from registry.web.catalog import Catalog, RepoRow, TagRow, head_tag

log = logging.getLogger("hangar.registry.web")

HERE = Path(__file__).parent
PAGE_SIZE = 20
HOME_SIZE = 12
MAX_QUERY = 200
HEX = frozenset("0123456789abcdef")
CAPABILITIES = ("embedding", "vision", "tools", "thinking")
ORDERS = ("newest", "popular")
# The first path segments the site itself takes; each is a reserved account name
# (registry.accounts.RESERVED_NAMES), so no namespace can hide behind one.
TOP_LEVEL = ("search", "api", "static")
# Paths that belong to the API: what no API route took keeps the API's JSON 404.
API_ROOTS = ("/v2", "/token", "/hangar/")
# Pages carry no script but our own, and a README's HTML never runs (registry.web.render).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' https: data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Vary": "Authorization, Cookie",
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(render.FILTERS)
templates = Jinja2Templates(env=_env, context_processors=[sessions.context])


@dataclass
class Summary:
    """A repository as listed on a page: its row, its tags and the card of its head tag."""

    repo: RepoRow
    tags: list[TagRow]
    head: Card | None
    sizes: list[str] = field(default_factory=list)  # parameter counts across its tags

    @property
    def description(self) -> str:
        return self.head.description if self.head else ""

    @property
    def capabilities(self) -> list[str]:
        return self.head.capabilities if self.head else []

    def as_json(self, base: str) -> dict[str, Any]:
        return {
            "name": self.repo.name if "/" in self.repo.name else f"{DEFAULT_NAMESPACE}/{self.repo.name}",
            "namespace": self.repo.namespace,
            "model": self.repo.model,
            "description": self.description,
            "capabilities": self.capabilities,
            "sizes": self.sizes,
            "tags": self.repo.tag_count,
            "pulls": self.repo.pulls,
            "updated_at": render.iso(self.repo.updated_at),
            "visibility": self.repo.visibility,
            "url": base + self.repo.path,
        }


def _catalog(request: Request) -> Catalog:
    return Catalog(services(request).meta.engine)


async def _principal(request: Request) -> Principal:
    grant = await bearer_grant(request)
    if grant is not None:
        return grant.principal
    session = sessions.web_state(request).session
    return sessions.principal_of(session) if session is not None else ANONYMOUS


async def may_read(request: Request, name: str) -> bool:
    """Whether the viewer may pull ``name``: the API's rule (``Authority.allowed``)."""
    svc = services(request)
    if svc.settings.auth == "off":
        return True
    principal = await _principal(request)
    return "pull" in await run_in_threadpool(svc.authority.allowed, principal, name)


async def _card_of(request: Request, name: str, tag: TagRow) -> Card | None:
    raw = await run_in_threadpool(_catalog(request).manifest, name, tag.digest)
    return await card(services(request).store, raw) if raw is not None else None


async def _summaries(request: Request, rows: list[RepoRow]) -> list[Summary]:
    tags = await run_in_threadpool(_catalog(request).tags, [r.name for r in rows])
    out = []
    for row in rows:
        repo_tags = tags.get(row.name.lower(), [])
        head = head_tag(repo_tags)
        head_card = await _card_of(request, row.name, head) if head else None
        sizes: list[str] = []
        for t in repo_tags[:10]:
            c = head_card if t is head else await _card_of(request, row.name, t)
            if c and c.parameters and c.parameters not in sizes:
                sizes.append(c.parameters)
        out.append(Summary(row, repo_tags, head_card, sizes))
    return out


def _matches(summary: Summary, words: list[str], capabilities: list[str]) -> bool:
    text = f"{summary.repo.name} {summary.description}".lower()
    return all(w in text for w in words) and all(c in summary.capabilities for c in capabilities)


@dataclass
class SearchResult:
    query: str
    capabilities: list[str]
    order: str
    page: int
    results: list[Summary]
    more: bool


async def _search(request: Request) -> SearchResult:
    params = request.query_params
    query = (params.get("q") or "").strip()[:MAX_QUERY]
    caps = [c for c in dict.fromkeys(params.getlist("c")) if c in CAPABILITIES]
    order = str(params.get("o")) if params.get("o") in ORDERS else "newest"
    try:
        page = max(1, min(int(params.get("page") or 1), 10_000))
    except ValueError:
        page = 1
    namespaces = await readable_namespaces(request)
    rows = await run_in_threadpool(_catalog(request).repositories, namespaces, popular=order == "popular")
    words = query.lower().split()
    found: list[Summary] = []
    wanted = page * PAGE_SIZE + 1
    # Descriptions and capabilities are the head tag's card (cached per manifest).
    for row in rows:
        summary = (await _summaries(request, [row]))[0]
        if _matches(summary, words, caps):
            found.append(summary)
            if len(found) >= wanted:
                break
    start = (page - 1) * PAGE_SIZE
    return SearchResult(query, caps, order, page, found[start : start + PAGE_SIZE], len(found) > start + PAGE_SIZE)


def _host(request: Request) -> str:
    return base_url(request).split("://", 1)[1]


def _page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    context.setdefault("title", "")
    context.setdefault("query", "")
    context["host"] = _host(request)
    return templates.TemplateResponse(request, template, context, status_code=status, headers=SECURITY_HEADERS)


def _not_found() -> HTTPException:
    return HTTPException(404, "No such page, or not one you may see.")


# -- pages ---------------------------------------------------------------------------------------


async def home(request: Request) -> Response:
    namespaces = await readable_namespaces(request)
    catalog = _catalog(request)
    newest = await run_in_threadpool(catalog.repositories, namespaces, limit=HOME_SIZE)
    popular = await run_in_threadpool(catalog.repositories, namespaces, limit=HOME_SIZE, popular=True)
    popular = [r for r in popular if r.pulls]
    return _page(
        request, "home.html", newest=await _summaries(request, newest), popular=await _summaries(request, popular)
    )


async def search_page(request: Request) -> Response:
    result = await _search(request)
    return _page(
        request, "search.html", title=f"{result.query} · search" if result.query else "Search", result=result,
        query=result.query, all_capabilities=CAPABILITIES, orders=ORDERS,
    )  # fmt: skip


async def api_search(request: Request) -> Response:
    result = await _search(request)
    base = base_url(request)
    body: dict[str, Any] = {
        "query": result.query,
        "capabilities": result.capabilities,
        "order": result.order,
        "page": result.page,
        "models": [s.as_json(base) for s in result.results],
        "next_page": result.page + 1 if result.more else None,
    }
    return JSONResponse(body, headers={"Vary": "Authorization", "Cache-Control": "no-store"})


async def namespace_page(request: Request) -> Response:
    namespace: str = request.path_params["namespace"]
    if not is_valid_namespace(namespace):
        raise _not_found()
    svc = services(request)
    account = await run_in_threadpool(svc.accounts.get, namespace)
    namespaces = await readable_namespaces(request)
    inside = namespaces is None or namespace.lower() in {n.lower() for n in namespaces}
    rows = await run_in_threadpool(_catalog(request).repositories, namespaces, namespace=namespace)
    if account is not None and account.disabled and not inside:
        raise _not_found()
    if not rows and (account is None or (account.default_visibility == "private" and not inside)):
        raise _not_found()
    filter_text = (request.query_params.get("q") or "").strip()[:MAX_QUERY]
    summaries = await _summaries(request, rows)
    if filter_text:
        summaries = [s for s in summaries if _matches(s, filter_text.lower().split(), [])]
    members: dict[str, str] = {}
    if account is not None and account.kind == "org" and inside:
        members = await run_in_threadpool(svc.accounts.members, account.name)
    name = account.name if account is not None else rows[0].namespace
    return _page(
        request, "namespace.html", title=name, namespace=name, account=account, models=summaries,
        filter_text=filter_text, members=members,
    )  # fmt: skip


async def _repository(request: Request, namespace: str, model: str) -> tuple[RepoRow, list[TagRow]]:
    """The repository a model page names, or 404 (also for one the viewer may not read)."""
    if not is_valid_namespace(namespace) or not is_valid_model(model):
        raise _not_found()
    names = [f"{namespace}/{model}"]
    if namespace.lower() == DEFAULT_NAMESPACE:
        names.append(model)  # a one-part name is library's
    for name in names:
        row = await run_in_threadpool(_catalog(request).repository, name)
        if row is not None:
            if not await may_read(request, row.name):
                break
            tags = await run_in_threadpool(_catalog(request).tags, [row.name])
            return row, tags.get(row.name.lower(), [])
    raise _not_found()


async def _tag_cards(request: Request, row: RepoRow, tags: list[TagRow]) -> list[tuple[TagRow, Card | None]]:
    return [(t, await _card_of(request, row.name, t)) for t in tags]


async def model_page(request: Request) -> Response:
    namespace: str = request.path_params["namespace"]
    model, _, tag = str(request.path_params["model"]).partition(":")
    if tag:
        return await tag_page(request, namespace, model, tag)
    row, tags = await _repository(request, namespace, model)
    head = head_tag(tags)
    rows = await _tag_cards(request, row, tags[:10])
    head_card = next((c for t, c in rows if t is head), None)
    return _page(
        request, "model.html", title=row.model, repo=row, tags=rows, tag_count=len(tags), head=head,
        card=head_card, tag=None, latest_digest=head.digest if head else None,
    )  # fmt: skip


async def tags_page(request: Request) -> Response:
    row, tags = await _repository(request, request.path_params["namespace"], request.path_params["model"])
    head = head_tag(tags)
    return _page(
        request, "tags.html", title=f"Tags · {row.model}", repo=row, tags=await _tag_cards(request, row, tags),
        latest_digest=head.digest if head else None,
    )  # fmt: skip


def _find_tag(tags: list[TagRow], tag: str) -> TagRow | None:
    """``tag`` as spelt, else ignoring case (tags compare as Ollama's names do)."""
    exact = next((t for t in tags if t.name == tag), None)
    return exact or next((t for t in tags if t.name.lower() == tag.lower()), None)


async def tag_page(request: Request, namespace: str, model: str, tag: str) -> Response:
    if not is_valid_tag(tag):
        raise _not_found()
    row, tags = await _repository(request, namespace, model)
    chosen = _find_tag(tags, tag)
    if chosen is None:
        raise _not_found()
    return _page(
        request, "tag.html", title=f"{row.model}:{chosen.name}", repo=row, tag=chosen,
        card=await _card_of(request, row.name, chosen),
    )  # fmt: skip


async def blob_page(request: Request) -> Response:
    """One layer of a tag: its text in full for text layers (template, system prompt, parameters,
    licence, messages, README), what it is for the others. ``/ns/model:tag/blobs/<hex>``, the hex
    at least 12 digits of the layer's digest, as ollama.com links them."""
    model, _, tag = str(request.path_params["model"]).partition(":")
    wanted = str(request.path_params["digest"]).removeprefix("sha256:").lower()
    if not tag or not is_valid_tag(tag) or not 12 <= len(wanted) <= 64 or not all(c in HEX for c in wanted):
        raise _not_found()
    row, tags = await _repository(request, request.path_params["namespace"], model)
    chosen = _find_tag(tags, tag)
    card = await _card_of(request, row.name, chosen) if chosen is not None else None
    layers = card.layers if card is not None else []
    layer = next((la for la in layers if la.digest.removeprefix("sha256:").startswith(wanted)), None)
    if chosen is None or layer is None:
        raise _not_found()
    return _page(
        request, "blob.html", title=f"{layer.kind} · {row.model}:{chosen.name}", repo=row, tag=chosen, layer=layer,
    )  # fmt: skip


# -- errors ---------------------------------------------------------------------------------------


def _error_page(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    path = request.url.path
    if path.startswith(API_ROOTS) or path == "/hangar":
        code = "UNSUPPORTED" if status in (404, 405) else "UNKNOWN"
        error = DistributionError(code, "no such endpoint" if status == 404 else message, status=status)
        return Response(error.body(), status_code=status, media_type="application/json")
    if path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    response = _page(request, "error.html", status, title=str(status), code=status, message=message)
    response.headers.update(headers or {})
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = (
        exc.detail
        if exc.status_code == 404
        else {405: "This page takes no such request."}.get(exc.status_code, str(exc.detail))
    )
    return _error_page(request, exc.status_code, message, dict(exc.headers or {}))


async def _distribution_error(request: Request, exc: Exception) -> Response:
    """A bad bearer token (the only distribution error a page raises): 401, said in HTML."""
    assert isinstance(exc, DistributionError)
    return _error_page(request, exc.status, exc.message)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_page(request, 500, "Something went wrong on our side.")


def web_app() -> Starlette:
    """The site as an app to mount at ``/`` after every API route. The registry's lifespan sets
    its ``state.services`` (``registry.app``)."""
    from registry.web.account_pages import routes as account_routes  # it renders with _page

    routes = [
        *account_routes,
        Route("/", home, methods=["GET"]),
        Route("/search", search_page, methods=["GET"]),
        Route("/api/search", api_search, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        Route("/{namespace}", namespace_page, methods=["GET"]),
        Route("/{namespace}/{model}/tags", tags_page, methods=["GET"]),
        Route("/{namespace}/{model}/blobs/{digest}", blob_page, methods=["GET"]),
        Route("/{namespace}/{model}", model_page, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(sessions.WebSessions, refuse=_error_page)],
        exception_handlers={
            HTTPException: _http_error,
            DistributionError: _distribution_error,
            Exception: _unexpected,
        },
    )
