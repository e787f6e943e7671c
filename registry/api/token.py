"""``GET /token``: the token endpoint named by every challenge's realm.

Three ways to ask (see ``formats.auth`` for the formats):

- signed with an ed25519 key, as the Ollama client does: ``Authorization: <key>:<signature>``
  over ``GET,<token URL>,<hash of the empty body>``, with ``ts`` within five minutes and a
  ``nonce`` never seen before. The URL is checked against this registry's own origins only
  (``registry.origins``: ``--public-url``, ``--allowed-host``, the listen address and loopback),
  never against the request's ``Host``: a hostile registry that relays a victim's request signed
  for ``http://evil:5960/token?…`` gets nothing;
- HTTP Basic with a robot's name (``namespace+robot``) and token, as Docker-style clients do
  (``skopeo --creds``);
- no credentials: an anonymous token (public pulls only).

The answer is ``{"token", "access_token", "expires_in", "issued_at"}`` with the requested scopes
cut down to what the caller may do (for a robot: all it may do on each repository named, see
``Authority.grant``), for this registry's canonical service whatever ``service`` the request named
(``registry.auth``). Refusals are 401 and are written to the audit log. Docker's extra parameters
(``account``, ``client_id``, ``offline_token``) are accepted and ignored: there is no refresh
token, a client asks again with its credentials.
"""

from __future__ import annotations

import base64
import datetime as dt
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from formats.auth import (
    CLOCK_SKEW,
    InvalidKey,
    Scope,
    decode_public_key,
    parse_authorization,
    token_signing_string,
)
from formats.errorcodes import DistributionError
from registry.api.common import audit, registry_origins, request_host, services
from registry.auth import ANONYMOUS, Principal


def requested_scopes(request: Request) -> list[Scope]:
    scopes = []
    for value in request.query_params.getlist("scope"):
        for text in value.split(" "):
            scope = Scope.parse(text)
            if scope is not None:
                scopes.append(scope)
    return scopes


def signed_urls(request: Request) -> list[str]:
    """The token URLs a client may have signed for this registry: the path and query as received,
    under each of this registry's origins. The request's own Host counts only when it is ours."""
    raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    tail = raw_path + ("?" + query if query else "")
    ours = registry_origins(request).candidates(request.url.scheme, request_host(request))
    return [origin + tail for origin in ours]


def signature_mismatch(request: Request) -> str:
    """The refusal for a signature over no URL of ours, with what to configure when the client
    reached us under a name we do not know."""
    return "the signature does not match the request" + registry_origins(request).hint(request_host(request))


def verify_signature(key_b64: str, signature: bytes, messages: list[bytes]) -> bool:
    try:
        public_key = Ed25519PublicKey.from_public_bytes(decode_public_key(key_b64))
    except (InvalidKey, ValueError):
        return False
    for message in messages:
        try:
            public_key.verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


async def check_freshness(request: Request) -> None:
    """``ts`` within the clock-skew window and a ``nonce`` used only once."""
    svc = services(request)
    ts, nonce = request.query_params.get("ts", ""), request.query_params.get("nonce", "")
    if not ts.lstrip("-").isdigit() or not nonce:
        raise _refuse("signed requests need ts and nonce query parameters")
    if abs(time.time() - int(ts)) > CLOCK_SKEW:
        raise _refuse("the request timestamp is outside the allowed window; check this machine's clock")
    if len(nonce) > 64:
        raise _refuse("the nonce is too long")
    expires = dt.datetime.fromtimestamp(int(ts) + CLOCK_SKEW + 60, dt.UTC)
    if not await run_in_threadpool(svc.accounts.use_nonce, nonce, expires):
        raise _refuse("the nonce was used before (a replayed request)")


async def key_principal(request: Request, key_b64: str, signature: bytes) -> Principal:
    svc = services(request)
    messages = [token_signing_string(url) for url in signed_urls(request)]
    if not verify_signature(key_b64, signature, messages):
        raise _refuse(signature_mismatch(request))
    await check_freshness(request)
    user = await run_in_threadpool(svc.accounts.user_for_key, key_b64)
    if user is None:
        raise _refuse("unknown key: sign in with 'hangar signin' to bind this key to an account")
    if user.disabled:
        raise _refuse(f"the account {user.name!r} is disabled")
    return Principal("user", user.name, user.id, user.is_admin)


async def robot_principal(request: Request, credentials: str) -> Principal:
    try:
        username, _, secret = base64.b64decode(credentials, validate=True).decode().partition(":")
    except ValueError:
        raise _refuse("malformed Basic credentials") from None
    robot = await run_in_threadpool(services(request).accounts.robot, username, secret)
    if robot is None:
        raise _refuse(f"invalid or expired robot credentials, or a disabled account, for {username!r}")
    return Principal("robot", robot.username, robot_namespace=robot.namespace, robot_scope=robot.scope)


class Refused(Exception):
    """Credentials that do not authenticate; the message says why."""


def _refuse(message: str) -> Refused:
    return Refused(message)


async def token(request: Request) -> Response:
    svc = services(request)
    header = request.headers.get("authorization", "")
    try:
        if not header:
            principal = ANONYMOUS
        elif header.lower().startswith("basic "):
            principal = await robot_principal(request, header[6:].strip())
        elif (signed := parse_authorization(header)) is not None:
            principal = await key_principal(request, *signed)
        else:
            raise _refuse("unsupported Authorization header")
    except Refused as e:
        await audit(request, "unknown", "auth", "/token", "denied", reason=str(e))
        raise DistributionError("UNAUTHORIZED", str(e)) from None

    scopes = requested_scopes(request)
    # A Basic holder's token covers its whole role on the repositories it named (Authority.grant:
    # oras-py reuses its first token); a signed (Ollama) request gets what it asked for, as it
    # asks again with each 401's scope.
    whole_role = principal.kind == "robot"
    granted = await run_in_threadpool(lambda: svc.authority.grant(principal, scopes, whole_role=whole_role))
    # The audience is ours, not the request's ``service``: a token is only ever good here.
    service = registry_origins(request).canonical_service
    value, expires_in, issued = svc.authority.mint(principal, granted, service)
    return JSONResponse(
        {
            "token": value,
            "access_token": value,
            "expires_in": expires_in,
            "issued_at": issued.isoformat().replace("+00:00", "Z"),
        }
    )
