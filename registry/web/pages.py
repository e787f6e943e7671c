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
``/{namespace}/{a}/{b}…``               the same pages for OCI names deeper than ``namespace/model``
                                        (``…/tags``, ``…:{tag}``, ``…:{tag}/blobs/{hex}``)
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
import time
from dataclasses import dataclass
from functools import partial
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from formats.errorcodes import DistributionError
from formats.names import DEFAULT_NAMESPACE, is_valid_model, is_valid_namespace, is_valid_tag
from registry.accounts import AccountRecord
from registry.api.common import base_url, bearer_grant, namespaces_readable_by, services
from registry.auth import ANONYMOUS, Principal
from registry.meta import ModelRow, TagRow
from registry.web import cards, render, sessions
from registry.web.cards import Card
from registry.web.catalog import Model, card_of, fill_missing_facts, head_tag

log = logging.getLogger("hangar.registry.web")

HERE = Path(__file__).parent
PAGE_SIZE = 20
HOME_SIZE = 12
NAMESPACE_PAGE_SIZE = 50
MODEL_PAGE_TAGS = 10  # the model page's tags table; /tags has them all
MAX_QUERY = 200
MAX_WORDS = 10  # a LIKE each: a query of more words searches for its first ten
MAX_PAGE = 10_000
MAX_DEPTH = 8  # path components after the namespace of an OCI name the site shows
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
_env.globals["tag_rows"] = render.tag_rows
templates = Jinja2Templates(env=_env, context_processors=[sessions.context])


async def viewer(request: Request) -> Principal:
    """Who is looking: the holder of the request's bearer token, else the signed-in browser's
    user (``registry.web.sessions`` puts it in the request's state), else anonymous."""
    grant = await bearer_grant(request)
    if grant is not None:
        return grant.principal
    session_viewer = request.scope.get("state", {}).get("web_viewer")
    return session_viewer if isinstance(session_viewer, Principal) else ANONYMOUS


async def viewer_namespaces(request: Request) -> set[str] | None:
    """The namespaces whose private models the viewer may list (the API's rule)."""
    return await namespaces_readable_by(request, await viewer(request))


def _models(rows: list[ModelRow]) -> list[Model]:
    return [Model.of(r) for r in rows]


@dataclass
class SearchResult:
    query: str
    capabilities: list[str]
    order: str
    page: int
    results: list[Model]
    more: bool


def _page_number(request: Request) -> int:
    try:
        return max(1, min(int(request.query_params.get("page") or 1), MAX_PAGE))
    except ValueError:
        return 1


async def _search(request: Request) -> SearchResult:
    """One SQL query over the summaries (``Metadata.models``): the page's rows and one more."""
    params = request.query_params
    query = (params.get("q") or "").strip()[:MAX_QUERY]
    caps = [c for c in dict.fromkeys(params.getlist("c")) if c in CAPABILITIES]
    order = str(params.get("o")) if params.get("o") in ORDERS else "newest"
    page = _page_number(request)
    namespaces = await viewer_namespaces(request)
    rows = await run_in_threadpool(
        partial(
            services(request).meta.models, namespaces, words=query.split()[:MAX_WORDS], capabilities=caps,
            popular=order == "popular", limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE,
        )
    )  # fmt: skip
    return SearchResult(query, caps, order, page, _models(rows[:PAGE_SIZE]), len(rows) > PAGE_SIZE)


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
    namespaces = await viewer_namespaces(request)
    meta = services(request).meta

    def lists() -> tuple[list[ModelRow], list[ModelRow]]:  # one trip to the thread pool
        return meta.models(namespaces, limit=HOME_SIZE), meta.models(namespaces, limit=HOME_SIZE, popular=True)

    newest, popular = await run_in_threadpool(lists)
    return _page(request, "home.html", newest=_models(newest), popular=_models([r for r in popular if r.pulls]))


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
        "models": [m.as_json(base) for m in result.results],
        "next_page": result.page + 1 if result.more else None,
    }
    return JSONResponse(body, headers={"Vary": "Authorization, Cookie", "Cache-Control": "no-store"})


async def namespace_page(request: Request) -> Response:
    namespace: str = request.path_params["namespace"]
    if not is_valid_namespace(namespace):
        raise _not_found()
    svc = services(request)
    namespaces = await viewer_namespaces(request)
    inside = namespaces is None or namespace.lower() in {n.lower() for n in namespaces}
    filter_text = (request.query_params.get("q") or "").strip()[:MAX_QUERY]
    page = _page_number(request)

    def look() -> tuple[AccountRecord | None, list[ModelRow], bool, dict[str, str]]:  # one trip to the pool
        account = svc.accounts.get(namespace)
        rows = svc.meta.models(
            namespaces, namespace=namespace, words=filter_text.split()[:MAX_WORDS],
            limit=NAMESPACE_PAGE_SIZE + 1, offset=(page - 1) * NAMESPACE_PAGE_SIZE,
        )  # fmt: skip
        # Nothing on this page of a filter: is there anything at all?
        shown = bool(rows)
        if not shown and (filter_text or page > 1):
            shown = bool(svc.meta.models(namespaces, namespace=namespace, limit=1))
        members: dict[str, str] = {}
        if account is not None and account.kind == "org" and inside:
            members = svc.accounts.members(account.name)
        return account, rows, shown, members

    account, rows, shown, members = await run_in_threadpool(look)
    if account is not None and account.disabled and not inside:
        raise _not_found()
    if not shown and (account is None or (account.default_visibility == "private" and not inside)):
        raise _not_found()
    name = account.name if account is not None else Model.of(rows[0]).namespace if rows else namespace
    return _page(
        request, "namespace.html", title=name, namespace=name, account=account,
        models=_models(rows[:NAMESPACE_PAGE_SIZE]), filter_text=filter_text, page=page,
        more=len(rows) > NAMESPACE_PAGE_SIZE, members=members,
    )  # fmt: skip


def _valid_model_path(model: str) -> bool:
    """``model``, or the path after the namespace of a deeper OCI name (``team/model``)."""
    parts = model.split("/")
    return len(parts) <= MAX_DEPTH and all(is_valid_model(p) for p in parts)


def _names(namespace: str, model: str) -> list[str]:
    """The repositories a page's path may name, or 404."""
    if not is_valid_namespace(namespace) or not _valid_model_path(model):
        raise _not_found()
    names = [f"{namespace}/{model}"]
    if namespace.lower() == DEFAULT_NAMESPACE and "/" not in model:
        names.append(model)  # a one-part name is library's
    return names


async def _repository(
    request: Request, namespace: str, model: str, tags: int | None = None, head: bool = False
) -> tuple[Model, list[TagRow]]:
    """The model a page names with its newest ``tags`` tags (None: all; ``head``: and its head
    tag, wherever it is), or 404, also for one the viewer may not read. The database is asked in
    one trip to the thread pool: under load each trip waits its turn for a CPU."""
    names = _names(namespace, model)
    svc = services(request)
    principal = await viewer(request)

    def look() -> tuple[Model, list[TagRow]] | None:
        for name in names:
            row = svc.meta.model(name)
            if row is None:
                continue
            if svc.settings.auth != "off" and "pull" not in svc.authority.allowed(principal, row.name):
                return None  # exactly as if it did not exist
            found = svc.meta.model_tags(row.name, tags)
            if head and tags is not None and not any(t.name == row.head_tag for t in found):
                found = svc.meta.model_tags(row.name)  # the head is older than the newest ``tags``
            return Model.of(row), found
        return None

    looked = await run_in_threadpool(look)
    if looked is None:
        raise _not_found()
    repo, found = looked
    return repo, await fill_missing_facts(svc.meta, svc.store, repo.name, found)


async def _readme(request: Request, repo: Model, tag: TagRow | None) -> str:
    svc = services(request)
    _, own = await run_in_threadpool(svc.meta.repository_page, repo.name)
    if own:  # set on the model's settings page: it stands for the model, whatever the tag
        return own
    if tag is None:
        return ""
    made = cards.cached(tag.digest)
    if made is not None:
        return made.readme
    stored = await run_in_threadpool(svc.meta.get_manifest, repo.name, tag.digest)
    return await cards.readme(svc.store, stored.content) if stored is not None else ""


async def _card(request: Request, repo: Model, tag: TagRow | None) -> Card | None:
    if tag is None:
        return None
    svc = services(request)
    return await card_of(svc.meta, svc.store, repo.name, tag.digest)


async def model_page(request: Request) -> Response:
    namespace: str = request.path_params["namespace"]
    model, _, tag = str(request.path_params["model"]).partition(":")
    if tag:
        return await tag_page(request, namespace, model, tag)
    return await _model_page(request, namespace, model)


async def _model_page(request: Request, namespace: str, model: str) -> Response:
    repo, every = await _repository(request, namespace, model, MODEL_PAGE_TAGS, head=True)
    tags = every[:MODEL_PAGE_TAGS]
    head = next((t for t in every if t.name == repo.row.head_tag), None) or head_tag(tags)
    return _page(
        request, "model.html", title=repo.model, repo=repo, tags=tags, tag_count=repo.tag_count, head=head,
        card=None, readme=await _readme(request, repo, head), tag=None, latest_digest=head.digest if head else None,
        upstream=await _upstream(request, repo),
    )  # fmt: skip


async def _upstream(request: Request, repo: Model) -> str:
    """Where a cached model came from ("" for the registry's own): a mirror's (registry.mirror)
    models say so on their page, as the API says it in X-Hangar-Upstream."""
    mirror = getattr(request.app.state, "mirror", None)
    if mirror is None:
        return ""
    return await run_in_threadpool(mirror.cache.upstream_of, repo.name) or ""


async def tags_page(request: Request) -> Response:
    return await _tags_or_model(request, request.path_params["namespace"], f"{request.path_params['model']}/tags")


async def _tags_or_model(request: Request, namespace: str, path: str) -> Response:
    """``/ns/…/x/tags``: the model page of a repository named so (OCI names may end in ``tags``),
    else the tags page of ``ns/…/x``."""
    try:
        return await _model_page(request, namespace, path)
    except HTTPException:
        return await _tags_page(request, namespace, path.removesuffix("/tags"))


async def _tags_page(request: Request, namespace: str, model: str) -> Response:
    repo, tags = await _repository(request, namespace, model)
    head = head_tag(tags)
    return _page(
        request, "tags.html", title=f"Tags · {repo.model}", repo=repo, tags=tags,
        latest_digest=head.digest if head else None,
    )  # fmt: skip


def _find_tag(tags: list[TagRow], tag: str) -> TagRow | None:
    """``tag`` as spelt, else ignoring case (tags compare as Ollama's names do)."""
    exact = next((t for t in tags if t.name == tag), None)
    return exact or next((t for t in tags if t.name.lower() == tag.lower()), None)


async def tag_page(request: Request, namespace: str, model: str, tag: str) -> Response:
    if not is_valid_tag(tag):
        raise _not_found()
    repo, tags = await _repository(request, namespace, model)
    chosen = _find_tag(tags, tag)
    if chosen is None:
        raise _not_found()
    return _page(
        request, "tag.html", title=f"{repo.model}:{chosen.name}", repo=repo, tag=chosen,
        card=await _card(request, repo, chosen),
    )  # fmt: skip


async def blob_page(request: Request) -> Response:
    """One layer of a tag: its text in full for text layers (template, system prompt, parameters,
    licence, messages, README), what it is for the others. ``/ns/model:tag/blobs/<hex>``, the hex
    at least 12 digits of the layer's digest, as ollama.com links them."""
    namespace, model = request.path_params["namespace"], str(request.path_params["model"])
    if ":" not in model:  # ns/x/blobs/y: a deeper repository's name
        return await _model_page(request, namespace, f"{model}/blobs/{request.path_params['digest']}")
    return await _blob_page(request, namespace, model, str(request.path_params["digest"]))


async def _blob_page(request: Request, namespace: str, model_tag: str, digest: str) -> Response:
    model, _, tag = model_tag.partition(":")
    wanted = digest.removeprefix("sha256:").lower()
    if not tag or not is_valid_tag(tag) or not 12 <= len(wanted) <= 64 or not all(c in HEX for c in wanted):
        raise _not_found()
    repo, tags = await _repository(request, namespace, model)
    chosen = _find_tag(tags, tag)
    card = await _card(request, repo, chosen)
    layers = card.layers if card is not None else []
    layer = next((la for la in layers if la.digest.removeprefix("sha256:").startswith(wanted)), None)
    if chosen is None or layer is None:
        raise _not_found()
    return _page(
        request, "blob.html", title=f"{layer.kind} · {repo.model}:{chosen.name}", repo=repo, tag=chosen, layer=layer,
    )  # fmt: skip


async def deep_page(request: Request) -> Response:
    """The pages of a repository deeper than ``namespace/model`` (``alice/team/model``, as skopeo
    or oras may push): ``/alice/team/model``, ``…/team/model/tags``, ``…/team/model:tag`` and
    ``…/team/model:tag/blobs/<hex>``. A whole path that names a repository is its model page;
    else a last component ``tags`` is the tags page of the rest."""
    namespace: str = request.path_params["namespace"]
    rest = str(request.path_params["rest"])
    if "/blobs/" in rest:
        model_tag, _, digest = rest.rpartition("/blobs/")
        if ":" in model_tag:
            return await _blob_page(request, namespace, model_tag, digest)
    model, _, tag = rest.partition(":")
    if tag:
        return await tag_page(request, namespace, model, tag)
    if rest.endswith("/tags"):
        return await _tags_or_model(request, namespace, rest)
    return await _model_page(request, namespace, rest)


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


class ServerTiming:
    """``Server-Timing: app;dur=MS, cpu;dur=MS`` on every answer of the site: the time from the
    request reaching the site to its answer starting (the page rendered), and the CPU time the
    process spent meanwhile (the request's own, one request at a time). Browsers' developer tools
    show them; ``bench/web.py`` reports them beside the time its client sees."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wall, cpu = time.perf_counter(), time.process_time()

        async def send_timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                took, used = (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000
                value = f"app;dur={took:.1f}, cpu;dur={used:.1f}"
                message["headers"] = [*message.get("headers", []), (b"server-timing", value.encode())]
            await send(message)

        await self.app(scope, receive, send_timed)


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
        Route("/{namespace}/{rest:path}", deep_page, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(ServerTiming), Middleware(sessions.WebSessions, refuse=_error_page)],
        exception_handlers={
            HTTPException: _http_error,
            DistributionError: _distribution_error,
            Exception: _unexpected,
        },
    )
