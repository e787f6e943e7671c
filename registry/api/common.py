"""What every handler needs: the app's services, validated path parameters, absolute URLs,
pagination and the body-length rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from formats.auth import Scope, challenge
from formats.digest import Digest, InvalidDigest
from formats.errorcodes import DistributionError
from formats.names import NameParseError, is_valid_tag, parse_registry_repository
from registry.accounts import Accounts
from registry.auth import ANONYMOUS, Authority, Grant, InvalidToken, Principal
from registry.config import Settings
from registry.meta import Metadata
from registry.origins import Origins, origins
from registry.pulls import PullCounter
from registry.ratelimit import AuditThrottle, TtlCache
from registry.signing import UrlSigner
from registry.storage import VerifiedStore

MAX_PAGE = 1000
# How stale the answer to "may this signed URL's holder still read the repository?" may be.
SIGNED_URL_RECHECK_SECONDS = 2.0
API_VERSION_HEADER = ("Docker-Distribution-Api-Version", "registry/2.0")


@dataclass
class Services:
    settings: Settings
    meta: Metadata
    accounts: Accounts
    authority: Authority
    store: VerifiedStore
    signer: UrlSigner
    # Per worker: how many refusals per address reach the audit table, and whether a signed
    # URL's subject may still read a repository (a few seconds stale at most).
    audit_throttle: AuditThrottle = field(default_factory=AuditThrottle)
    url_access: TtlCache = field(default_factory=lambda: TtlCache(ttl=SIGNED_URL_RECHECK_SECONDS))
    # The key behind sign-in's decoy approval codes (read from the database on first use).
    decoy_key: bytes | None = None
    # Manifest GETs by tag, written in batches (registry.pulls).
    pulls: PullCounter = field(default_factory=PullCounter)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def repository(request: Request) -> str:
    """The repository name path parameter, validated (``parse_registry_repository``)."""
    name: str = request.path_params["name"]
    try:
        parse_registry_repository(name)
    except NameParseError as e:
        raise DistributionError("NAME_INVALID", str(e), detail={"name": name}) from None
    return name


def digest_param(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InvalidDigest as e:
        raise DistributionError("DIGEST_INVALID", str(e), detail={"digest": text}) from None


def reference_param(text: str) -> Digest | str:
    """A manifest reference: a digest, or a tag."""
    if ":" in text:
        return digest_param(text)
    if not is_valid_tag(text):
        raise DistributionError("TAG_INVALID", f"invalid tag {text!r}", detail={"tag": text})
    return text


def external_url(request: Request, path: str, query: dict[str, str] | None = None) -> str:
    """An absolute URL on this registry: under the name the client used when that is one of ours
    (``registry.origins``), else under the canonical one (never a name from a stranger's Host)."""
    return base_url(request) + path + ("?" + urlencode(query) if query else "")


def page_params(request: Request) -> tuple[int, str | None]:
    raw_n = request.query_params.get("n")
    last = request.query_params.get("last") or None
    if raw_n is None or raw_n == "":
        return MAX_PAGE, last
    try:
        n = int(raw_n)
    except ValueError:
        n = -1
    if n < 0:
        raise DistributionError("PAGINATION_NUMBER_INVALID", f"n must be a non-negative integer, got {raw_n!r}")
    return min(n, MAX_PAGE), last


def next_link(path: str, n: int, last: str) -> str:
    return f'<{path}?{urlencode({"n": n, "last": last})}>; rel="next"'


def content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise DistributionError("SIZE_INVALID", f"invalid Content-Length {raw!r}")
    return int(raw)


def has_body(request: Request) -> bool:
    length = content_length(request)
    if length is not None:
        return length > 0
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


# -- authentication and authorisation ----------------------------------------------------------


def registry_origins(request: Request) -> Origins:
    return origins(services(request).settings)


def request_host(request: Request) -> str:
    """The ``Host`` the client sent (what it believes it is talking to; not to be trusted)."""
    return request.headers.get("host", "")


def base_url(request: Request) -> str:
    """``scheme://host[:port]`` of this registry for this client (``Origins.base_url``)."""
    return registry_origins(request).base_url(request.url.scheme, request_host(request))


def remote(request: Request) -> str:
    return request.client.host if request.client else ""


def unauthorized(request: Request, scope: Scope | None = None, message: str | None = None) -> DistributionError:
    """401 with the challenge that tells a client where to get a token for ``scope``."""
    base = base_url(request)
    service = base.split("://", 1)[1]
    header = challenge(f"{base}/token", service, str(scope) if scope else None)
    if hint := registry_origins(request).hint(request_host(request)):
        message = (message or "authentication required") + hint
    return DistributionError("UNAUTHORIZED", message, headers={"WWW-Authenticate": header})


async def audit(request: Request, actor: str, action: str, target: str, outcome: str, **detail: object) -> None:
    """Write an audit row. Refusals (any outcome but ``ok``) are throttled per address and action
    (``registry.ratelimit.AuditThrottle``) so that a flood of bad requests cannot flood the table."""
    svc = services(request)
    request.state.audited = True  # the account API writes a row for refusals that have none
    address = remote(request)
    if outcome != "ok":
        extra = svc.audit_throttle.admit(address, action)
        if extra is None:
            return
        detail.update(extra)
    await run_in_threadpool(svc.accounts.audit, actor, action, target, outcome, address, **detail)


async def bearer_grant(request: Request, scope: Scope | None = None) -> Grant | None:
    """The grant of the request's bearer token; None without one; 401 for a bad one (audited).

    The 401 names ``scope``, the scope of the request being refused: a client whose token
    expired mid-push asks for a new one with the challenge's scope, and Ollama's asks for an
    empty scope (then fails) when the challenge names none."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return None
    try:
        audience = registry_origins(request).services
        return await run_in_threadpool(services(request).authority.verify, header[7:].strip(), audience)
    except InvalidToken as e:
        await audit(request, "unknown", "auth", request.url.path, "denied", reason=str(e))
        raise unauthorized(request, scope, message=str(e)) from None


async def authorize(request: Request, name: str, action: str) -> Principal:
    """Let the request take ``action`` on repository ``name`` or raise the right error:

    - 401 with a challenge when a token (or a token with this scope) could help;
    - 404 NAME_UNKNOWN for reads of what the caller may not see (as if it did not exist);
    - 403 DENIED for writes the caller may not make (audited)."""
    svc = services(request)
    if svc.settings.auth == "off":
        return ANONYMOUS
    wanted = Scope(name, frozenset({"pull", action}))
    grant = await bearer_grant(request, wanted)
    if grant is not None and grant.allows(name, action):
        return grant.principal
    principal = grant.principal if grant is not None else ANONYMOUS
    possible = await run_in_threadpool(svc.authority.allowed, principal, name)
    if action in possible:
        if grant is None and action == "pull":
            return ANONYMOUS  # anonymous pulls of public repositories need no token
        raise unauthorized(request, wanted)
    if principal.kind == "anonymous":
        raise unauthorized(request, wanted)
    # Every refusal of a known principal is audited, reads included (they answer 404 below).
    await audit(request, principal.actor, action, name, "denied", reason="no permission")
    if action == "pull" and "pull" not in possible:
        raise DistributionError("NAME_UNKNOWN", detail={"name": name})
    # Ollama's CLI explains a refused push ("you are not authorized to push to this namespace")
    # only when the message says "access denied" or "unauthorized" (protocol spec §4.1).
    raise DistributionError("DENIED", f"access denied: {principal.actor} may not {action} {name}")


async def readable_namespaces(request: Request) -> set[str] | None:
    """Namespaces whose private repositories the caller may list (None: all of them)."""
    if services(request).settings.auth == "off":
        return None
    grant = await bearer_grant(request)
    return await namespaces_readable_by(request, grant.principal if grant is not None else ANONYMOUS)


async def namespaces_readable_by(request: Request, principal: Principal) -> set[str] | None:
    """``readable_namespaces`` for a principal found otherwise (the web site's viewer)."""
    svc = services(request)
    if svc.settings.auth == "off":
        return None
    if principal.is_admin:
        return None
    if principal.kind == "robot" and principal.robot_namespace:
        return {principal.robot_namespace}
    if principal.kind == "user" and principal.account_id is not None:
        orgs = await run_in_threadpool(svc.accounts.memberships, principal.account_id)
        return {principal.name, *orgs}
    return set()
