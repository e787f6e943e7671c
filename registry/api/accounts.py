"""The account API, ``/hangar/v1/…``: sign-up, sign-in, keys, robots and settings.

Every request is signed with the caller's ed25519 key (``formats.auth``, scheme v2:
``HANGAR2,<METHOD>,<origin><path>?<query>,<hash of the body>`` with ``ts`` and ``nonce`` in the
query and the header ``Hangar-Signature-Version: 2``). The origin is verified against this
registry's own (``registry.origins``), so a request signed for another registry is refused here;
a request in the old scheme (no origin) is refused with a message asking for a newer client.
Answers are JSON; errors are ``{"error": "…"}`` with a 4xx status.

======================================  ==========================================================
``POST /hangar/v1/signup``              ``{"username", "invite"?, "key_name"?}``: a new user with this key
``POST /hangar/v1/signin``              ``{"username", "key_name"?}``: 200 signed in, or 202 with an approval code
                                        (for any name: whether it exists is not told)
``GET  /hangar/v1/me``                  who this key belongs to
``GET  /hangar/v1/keys``                the user's keys
``DELETE /hangar/v1/keys/<fingerprint>``  remove a key
``POST /hangar/v1/keys/approve``        ``{"code"}``: bind a key waiting for approval
``POST /hangar/v1/signout``             remove the signing key
``POST /hangar/v1/password``            ``{"password"}``: set the web site's password (``hangar passwd``)
``POST /hangar/v1/signin-link``         a one-time web sign-in link, valid 10 minutes
``POST /hangar/v1/robots``              ``{"namespace", "name", "scope", "expires_in"}``: a robot token (shown once)
``GET  /hangar/v1/robots?namespace=``   a namespace's robots
``DELETE /hangar/v1/robots/<ns>/<name>``
``PUT  /hangar/v1/repositories/<ns>/<model>``  ``{"visibility"}``
``PUT  /hangar/v1/namespaces/<ns>``     ``{"default_visibility"}``
``PUT  /hangar/v1/orgs/<org>/members/<user>``  ``{"role"}``; ``DELETE`` removes the member
======================================  ==========================================================
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from formats.auth import (
    API_SIGNATURE_HEADER,
    API_SIGNATURE_VERSION,
    api_signing_string,
    fingerprint,
    parse_authorization,
)
from formats.names import NameParseError, parse_repository
from registry.accounts import (
    APPROVAL_CODE_ALPHABET,
    SIGNIN_LINK_TTL,
    AccountError,
    AccountRecord,
    KeyTaken,
    NameReserved,
    NameTaken,
    NoSuchNamespace,
    NotAnOwner,
)
from registry.api.common import audit, base_url, registry_origins, request_host, services
from registry.api.token import Refused, check_freshness, signature_mismatch, verify_signature

MAX_BODY = 64 * 1024


class AccountsApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Request, "Caller"], Awaitable[Response]]


class Caller:
    """The verified key of a signed request, and the user it belongs to (if any)."""

    def __init__(self, key: str, body: dict[str, Any], user: AccountRecord | None) -> None:
        self.key = key
        self.body = body
        self.user = user

    def require_user(self) -> AccountRecord:
        if self.user is None:
            raise AccountsApiError(401, "this key is not bound to an account: run 'hangar signin'")
        if self.user.disabled:
            raise AccountsApiError(403, f"the account {self.user.name!r} is disabled")
        return self.user

    def field(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        value = self.body.get(name, default)
        if required and (value is None or value == ""):
            raise AccountsApiError(400, f"missing field {name!r}")
        return value


# The audit log's action for a refusal no handler recorded itself (by handler name).
_ACTIONS = {
    "signout": "key.remove", "list_keys": "keys", "remove_key": "key.remove", "approve_key": "key.add",
    "create_robot": "robot.create", "list_robots": "robots", "delete_robot": "robot.delete",
    "set_repository": "visibility", "set_namespace": "visibility", "set_member": "member.set",
    "set_password": "password", "signin_link": "signin.link",
}  # fmt: skip


def signed(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Verify the request's signature, then call ``handler(request, caller)``; map errors to JSON.
    Every refusal is in the audit log: one the handler did not record is recorded here."""
    action = _ACTIONS.get(handler.__name__, handler.__name__)

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        caller: Caller | None = None
        try:
            caller = await _verify(request)
            return await handler(request, caller)
        except AccountsApiError as e:
            status, message = e.status, str(e)
        except (NameTaken, KeyTaken) as e:
            status, message = 409, str(e)
        except NameReserved as e:
            status, message = 403, str(e)
        except AccountError as e:
            status, message = 400, str(e)
        if not getattr(request.state, "audited", False):
            actor = caller.user.name if caller is not None and caller.user is not None else "unknown"
            detail = {"key": fingerprint(caller.key)} if caller is not None else {}
            await audit(request, actor, action, request.url.path, "denied", status=status, reason=message, **detail)
        return JSONResponse({"error": message}, status_code=status)

    return endpoint


async def _verify(request: Request) -> Caller:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise AccountsApiError(413, "request body too large")
    parsed = parse_authorization(request.headers.get("authorization", ""))
    if parsed is None:
        raise AccountsApiError(401, "sign this request with your key (Authorization: <public key>:<signature>)")
    key, signature = parsed
    path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    path_and_query = path + ("?" + query if query else "")
    ours = registry_origins(request).candidates(request.url.scheme, request_host(request))
    messages = [api_signing_string(request.method, origin, path_and_query, raw) for origin in ours]
    try:
        if request.headers.get(API_SIGNATURE_HEADER) != API_SIGNATURE_VERSION:
            # v1 signatures name no registry and could be replayed here from any other one.
            raise Refused(
                f"this registry needs a newer hangar client: signed request scheme v{API_SIGNATURE_VERSION}"
                " (signatures bound to the registry's address); upgrade hangar and retry"
            )
        if not verify_signature(key, signature, messages):
            raise Refused(signature_mismatch(request))
        await check_freshness(request)
    except Refused as e:
        await audit(request, "unknown", "auth", request.url.path, "denied", reason=str(e), key=fingerprint(key))
        raise AccountsApiError(401, str(e)) from None
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise AccountsApiError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise AccountsApiError(400, "the body must be a JSON object")
    user = await run_in_threadpool(services(request).accounts.user_for_key, key)
    return Caller(key, body, user)


def _key_json(key: Any, current: str | None = None) -> dict[str, Any]:
    return {
        "fingerprint": key.fingerprint,
        "name": key.name,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "current": key.key == current,
    }


async def _user_json(request: Request, user: AccountRecord) -> dict[str, Any]:
    orgs = await run_in_threadpool(services(request).accounts.memberships, user.id)
    return {"username": user.name, "admin": user.is_admin, "organizations": orgs}


# -- sign-up and sign-in -------------------------------------------------------------------------


@signed
async def signup(request: Request, caller: Caller) -> Response:
    svc = services(request)
    username = str(caller.field("username", required=True))
    mode = svc.settings.signup
    invite = caller.field("invite")
    if mode == "closed":  # invite codes too: closed means administrators create every account
        await audit(request, username, "signup", username, "denied", reason="sign-up is closed")
        raise AccountsApiError(403, "sign-up is closed on this registry; ask an administrator for an account")
    key_name = str(caller.field("key_name") or "")
    try:
        user = await run_in_threadpool(svc.accounts.signup, username, caller.key, key_name, invite, mode != "open")
    except AccountError as e:
        await audit(request, username, "signup", username, "denied", reason=str(e))
        raise
    await audit(request, user.name, "signup", user.name, "ok", key=fingerprint(caller.key))
    return JSONResponse({"status": "signed_up", **await _user_json(request, user)}, status_code=201)


@signed
async def signin(request: Request, caller: Caller) -> Response:
    svc = services(request)
    username = str(caller.field("username") or "")
    if caller.user is not None:
        if username and username.lower() != caller.user.name.lower():
            raise AccountsApiError(409, f"this key belongs to {caller.user.name!r}, not {username!r}")
        user = caller.require_user()
        await audit(request, user.name, "signin", user.name, "ok", key=fingerprint(caller.key))
        return JSONResponse({"status": "signed_in", **await _user_json(request, user)})
    if not username:
        raise AccountsApiError(404, "this key is not bound to an account; give --username to sign in or sign up")
    account = await run_in_threadpool(svc.accounts.get, username)
    if account is None or account.kind != "user" or account.disabled:
        # The same answer as for a real user, so that sign-in does not tell which names exist:
        # a code that nothing will ever approve (stable per name and key, as a real one is).
        code = await _decoy_code(request, username, caller.key)
        reason = "no such user" if account is None or account.kind != "user" else "the account is disabled"
        await audit(request, "unknown", "signin", username, "denied", reason=reason, key=fingerprint(caller.key))
    else:
        key_name = str(caller.field("key_name") or "")
        code = await run_in_threadpool(svc.accounts.request_approval, account.id, caller.key, key_name)
        await audit(request, account.name, "key.request", fingerprint(caller.key), "ok")
    return JSONResponse(
        {
            "status": "approval_required",
            "code": code,
            "message": f"if {username!r} is an account here, approve this key from a device signed in to it: "
            f"hangar keys approve {code}",
            # The registry's sign-up rule (not the account's existence): lets the client offer sign-up.
            "signup": svc.settings.signup,
        },
        status_code=202,
    )


async def _decoy_code(request: Request, username: str, key: str) -> str:
    """An approval code for a user who does not exist (or is disabled): shaped like a real one and
    the same each time the same key asks for the same name, so that polling cannot tell."""
    svc = services(request)
    if svc.decoy_key is None:
        svc.decoy_key = await run_in_threadpool(svc.meta.secret, "signin-decoy")
    mac = hmac.new(svc.decoy_key, f"{username.lower()}\n{key}".encode(), hashlib.sha256).digest()
    code = "".join(APPROVAL_CODE_ALPHABET[b % len(APPROVAL_CODE_ALPHABET)] for b in mac[:8])
    return f"{code[:4]}-{code[4:]}"


@signed
async def me(request: Request, caller: Caller) -> Response:
    user = caller.require_user()
    keys = await run_in_threadpool(services(request).accounts.keys, user.id)
    current = next(_key_json(k, caller.key) for k in keys if k.key == caller.key)
    return JSONResponse({**await _user_json(request, user), "key": current})


@signed
async def signout(request: Request, caller: Caller) -> Response:
    user = caller.require_user()
    fp = fingerprint(caller.key)
    await run_in_threadpool(services(request).accounts.remove_key, user.id, fp)
    await audit(request, user.name, "key.remove", fp, "ok", signout=True)
    return JSONResponse({"status": "signed_out", "fingerprint": fp})


# -- keys ------------------------------------------------------------------------------------------


@signed
async def list_keys(request: Request, caller: Caller) -> Response:
    user = caller.require_user()
    keys = await run_in_threadpool(services(request).accounts.keys, user.id)
    return JSONResponse({"keys": [_key_json(k, caller.key) for k in keys]})


@signed
async def remove_key(request: Request, caller: Caller) -> Response:
    user = caller.require_user()
    fp = request.path_params["fingerprint"]
    if not await run_in_threadpool(services(request).accounts.remove_key, user.id, fp):
        raise AccountsApiError(404, f"no key {fp} on this account")
    await audit(request, user.name, "key.remove", fp, "ok")
    return JSONResponse({"status": "removed", "fingerprint": fp})


@signed
async def approve_key(request: Request, caller: Caller) -> Response:
    user = caller.require_user()
    code = str(caller.field("code", required=True))
    key = await run_in_threadpool(services(request).accounts.approve, user.id, code)
    if key is None:
        await audit(request, user.name, "key.add", code, "denied", reason="unknown or expired code")
        raise AccountsApiError(404, "no key is waiting for approval under that code (codes expire after 15 minutes)")
    await audit(request, user.name, "key.add", key.fingerprint, "ok", approved_by=fingerprint(caller.key))
    return JSONResponse({"status": "approved", **_key_json(key)})


# -- the web site: password and sign-in links -------------------------------------------------------


@signed
async def set_password(request: Request, caller: Caller) -> Response:
    """Set the user's web password. The key's signature is the proof of identity; the password
    goes into no log and no audit row."""
    user = caller.require_user()
    password = caller.field("password", required=True)
    if not isinstance(password, str):
        raise AccountsApiError(400, "the password must be a string")
    await run_in_threadpool(services(request).accounts.set_password, user.id, password)
    await audit(request, user.name, "password", user.name, "ok", key=fingerprint(caller.key))
    return JSONResponse({"status": "password_set", "username": user.name})


@signed
async def signin_link(request: Request, caller: Caller) -> Response:
    """A one-time link that signs the user in to the web site (for an account made from the CLI)."""
    user = caller.require_user()
    token = await run_in_threadpool(services(request).accounts.create_signin_link, user.id)
    await audit(request, user.name, "signin.link", user.name, "ok", key=fingerprint(caller.key))
    return JSONResponse(
        {"url": f"{base_url(request)}/signin/link/{token}", "expires_in": int(SIGNIN_LINK_TTL)}, status_code=201
    )


# -- namespaces: robots, visibility, members ---------------------------------------------------------


async def _owned_namespace(request: Request, caller: Caller, namespace: str) -> str:
    """The namespace's spelling, if the caller may manage it (``Accounts.manageable``: its user,
    an org owner, an admin; the web site's settings pages apply the same rule)."""
    user = caller.require_user()
    try:
        account = await run_in_threadpool(services(request).accounts.manageable, user, namespace)
    except NoSuchNamespace as e:
        raise AccountsApiError(404, str(e)) from None
    except NotAnOwner as e:
        await audit(request, user.name, "settings", namespace, "denied", reason="not an owner")
        raise AccountsApiError(403, str(e)) from None
    return account.name


@signed
async def create_robot(request: Request, caller: Caller) -> Response:
    namespace = await _owned_namespace(request, caller, str(caller.field("namespace", required=True)))
    expires_in = caller.field("expires_in", 30 * 86400)
    if not isinstance(expires_in, int | float) or expires_in <= 0:
        raise AccountsApiError(400, "expires_in must be a positive number of seconds")
    robot, value = await run_in_threadpool(
        services(request).accounts.create_robot,
        namespace,
        str(caller.field("name", required=True)),
        str(caller.field("scope", "pull")),
        float(expires_in),
    )
    await audit(request, caller.require_user().name, "robot.create", robot.username, "ok", scope=robot.scope)
    return JSONResponse(
        {"username": robot.username, "token": value, "scope": robot.scope, "expires_at": robot.expires_at.isoformat()},
        status_code=201,
    )


@signed
async def list_robots(request: Request, caller: Caller) -> Response:
    namespace = await _owned_namespace(request, caller, request.query_params.get("namespace", ""))
    robots = await run_in_threadpool(services(request).accounts.robots, namespace)
    return JSONResponse(
        {"robots": [{"username": r.username, "scope": r.scope, "expires_at": r.expires_at.isoformat()} for r in robots]}
    )


@signed
async def delete_robot(request: Request, caller: Caller) -> Response:
    namespace = await _owned_namespace(request, caller, request.path_params["namespace"])
    name = request.path_params["name"]
    if not await run_in_threadpool(services(request).accounts.delete_robot, namespace, name):
        raise AccountsApiError(404, f"no robot {namespace}+{name}")
    await audit(request, caller.require_user().name, "robot.delete", f"{namespace}+{name}", "ok")
    return JSONResponse({"status": "deleted"})


@signed
async def set_repository(request: Request, caller: Caller) -> Response:
    name = f"{request.path_params['namespace']}/{request.path_params['model']}"
    try:
        parse_repository(name)
    except NameParseError as e:
        raise AccountsApiError(400, str(e)) from None
    await _owned_namespace(request, caller, request.path_params["namespace"])
    visibility = str(caller.field("visibility", required=True))
    if not await run_in_threadpool(services(request).meta.set_repository_visibility, name, visibility):
        raise AccountsApiError(404, f"no repository {name}")
    await audit(request, caller.require_user().name, "visibility", name, "ok", visibility=visibility)
    return JSONResponse({"repository": name, "visibility": visibility})


@signed
async def set_namespace(request: Request, caller: Caller) -> Response:
    namespace = await _owned_namespace(request, caller, request.path_params["namespace"])
    visibility = str(caller.field("default_visibility", required=True))
    await run_in_threadpool(services(request).accounts.set_default_visibility, namespace, visibility)
    await audit(request, caller.require_user().name, "visibility", namespace, "ok", default=visibility)
    return JSONResponse({"namespace": namespace, "default_visibility": visibility})


@signed
async def set_member(request: Request, caller: Caller) -> Response:
    org = await _owned_namespace(request, caller, request.path_params["org"])
    user = request.path_params["user"]
    svc = services(request)
    if request.method == "DELETE":
        if not await run_in_threadpool(svc.accounts.remove_member, org, user):
            raise AccountsApiError(404, f"{user!r} is not a member of {org!r}")
        await audit(request, caller.require_user().name, "member.remove", f"{org}/{user}", "ok")
        return JSONResponse({"status": "removed"})
    role = str(caller.field("role", required=True))
    await run_in_threadpool(svc.accounts.set_member, org, user, role)
    await audit(request, caller.require_user().name, "member.set", f"{org}/{user}", "ok", role=role)
    return JSONResponse({"organization": org, "username": user, "role": role})


P = "/hangar/v1"
routes = [
    Route(P + "/signup", signup, methods=["POST"]),
    Route(P + "/signin", signin, methods=["POST"]),
    Route(P + "/signout", signout, methods=["POST"]),
    Route(P + "/me", me, methods=["GET"]),
    Route(P + "/password", set_password, methods=["POST"]),
    Route(P + "/signin-link", signin_link, methods=["POST"]),
    Route(P + "/keys", list_keys, methods=["GET"]),
    Route(P + "/keys/approve", approve_key, methods=["POST"]),
    Route(P + "/keys/{fingerprint:path}", remove_key, methods=["DELETE"]),
    Route(P + "/robots", create_robot, methods=["POST"]),
    Route(P + "/robots", list_robots, methods=["GET"]),
    Route(P + "/robots/{namespace}/{name}", delete_robot, methods=["DELETE"]),
    Route(P + "/repositories/{namespace}/{model}", set_repository, methods=["PUT"]),
    Route(P + "/namespaces/{namespace}", set_namespace, methods=["PUT"]),
    Route(P + "/orgs/{org}/members/{user}", set_member, methods=["PUT", "DELETE"]),
]
