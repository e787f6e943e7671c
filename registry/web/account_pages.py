"""The web site's account pages (issue #11): sign-up, sign-in, sign-out, keys, robots, profile,
Ollama's connect URL, and an organisation's settings.

======================================  ==============================================================
``/signup``                             a user with a password (follows ``--signup``; an invite field
                                        when it is ``invite``)
``/signin``, ``/signout``               password sign-in (rate-limited per account and per address)
``/signin/link/{token}``                a one-time link from ``hangar signin --web``
``/settings/profile``                   password change, the browser sessions, "sign out everywhere"
``/settings/keys``                      the ed25519 keys: list, add by pasting ``ssh-ed25519 …``, remove
``/settings/robots``                    robots of every namespace the user manages
``/settings/orgs/{org}``                an organisation's members, roles and default visibility
``/settings/models/{ns}/{model}``       a model's visibility; delete a tag or the whole model
``/connect?name=HOST&key=K``            Ollama's connect URL (protocol spec §5.6): confirm, and the key
                                        joins the signed-in account
======================================  ==============================================================

Every action is allowed exactly when the account API allows it: the pages call the same
``registry.accounts`` rules (``Accounts.manageable`` for a namespace's settings, the user's own
keys only) and write the same audit rows (with ``web: true``). Every POST has passed the CSRF
check of ``registry.web.sessions`` before it reaches a handler here; every handler answers a
successful POST with a 303 redirect (or a page that shows a secret once)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from formats.auth import InvalidKey, decode_public_key, encode_public_key, fingerprint
from formats.digest import Digest
from formats.names import is_valid_model, is_valid_namespace
from registry.accounts import (
    ROBOT_SCOPES,
    ROLES,
    VISIBILITIES,
    AccountError,
    AccountRecord,
    KeyTaken,
    NameReserved,
    NameTaken,
    NoSuchNamespace,
    NotAnOwner,
    hash_password,
)
from registry.api.common import audit, remote, services
from registry.auth import ALL
from registry.ratelimit import RateLimiter
from registry.web import sessions
from registry.web.cards import MAX_TEXT
from registry.web.pages import _page

# Sign-in attempts a minute (token buckets, per worker as ``--rate-limit`` is): per account name,
# so that guessing one person's password from many addresses is slow, and per address.
SIGNIN_PER_ACCOUNT = 10
SIGNIN_PER_ADDRESS = 30
ROBOT_MAX_DAYS = 365
MAX_KEY_LINE = 1024
MAX_README = MAX_TEXT  # what a model page shows of a README layer, too

Page = Callable[[Request], Awaitable[Response]]


def _limiters(request: Request) -> tuple[RateLimiter, RateLimiter]:
    state = request.app.state
    limiters: tuple[RateLimiter, RateLimiter] | None = getattr(state, "signin_limiters", None)
    if limiters is None:
        limiters = (RateLimiter(SIGNIN_PER_ACCOUNT), RateLimiter(SIGNIN_PER_ADDRESS))
        state.signin_limiters = limiters
    return limiters


def _safe_next(target: str | None) -> str:
    """A same-site path to go to after sign-in; anything else (``//evil``, ``https://…``) is ``/``."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _signin_redirect(request: Request) -> RedirectResponse:
    here = request.url.path + ("?" + request.url.query if request.url.query else "")
    return _see_other("/signin?" + urlencode({"next": here}))


def _user(request: Request) -> AccountRecord | None:
    return sessions.web_state(request).user


def signed_in(page: Callable[[Request, AccountRecord], Awaitable[Response]]) -> Page:
    """A page for signed-in users: others go to the sign-in page (and come back)."""

    async def endpoint(request: Request) -> Response:
        user = _user(request)
        if user is None:
            return _signin_redirect(request)
        return await page(request, user)

    endpoint.__name__ = page.__name__
    return endpoint


async def _audit(request: Request, actor: str, action: str, target: str, outcome: str, **detail: Any) -> None:
    await audit(request, actor, action, target, outcome, web=True, **detail)


# -- sign-up, sign-in, sign-out ---------------------------------------------------------------------


async def signup(request: Request) -> Response:
    mode = services(request).settings.signup
    if _user(request) is not None:
        return _see_other("/settings/keys")
    values = {"username": "", "invite": ""}
    error = ""
    status = 200
    if mode == "closed":
        status = 403 if request.method == "POST" else 200
    elif request.method == "POST":
        data = sessions.form(request)
        values = {"username": data.get("username", "").strip(), "invite": data.get("invite", "").strip()}
        password, again = data.get("password", ""), data.get("password2", "")
        name = values["username"] or "unknown"
        try:
            if password != again:
                raise AccountError("the two passwords differ")
            encoded = await run_in_threadpool(hash_password, password)
            user = await run_in_threadpool(
                services(request).accounts.signup, values["username"], None, "", values["invite"] or None,
                mode != "open", password_hash=encoded,
            )  # fmt: skip
        except (AccountError, NameTaken, NameReserved) as e:
            error, status = str(e).replace("(--invite)", "").strip(), 400
            await _audit(request, name, "signup", name, "denied", reason=error)
        else:
            await _audit(request, user.name, "signup", user.name, "ok")
            response = _see_other("/settings/keys")
            await sessions.sign_in(request, response, user)
            return response
    return _page(request, "signup.html", status, title="Sign up", mode=mode, values=values, error=error)


async def signin(request: Request) -> Response:
    target = _safe_next(
        request.query_params.get("next") if request.method == "GET" else sessions.form(request).get("next")
    )
    if request.method == "GET":
        return _page(request, "signin.html", title="Sign in", next=target, username="", error="")
    data = sessions.form(request)
    username, password = data.get("username", "").strip()[:80], data.get("password", "")
    per_account, per_address = _limiters(request)
    wait = max(per_address.take(remote(request)), per_account.take(username.lower()))
    if wait:
        await _audit(request, username or "unknown", "signin", username, "denied", reason="too many attempts")
        response = _page(
            request, "signin.html", 429, title="Sign in", next=target, username=username,
            error="Too many sign-in attempts. Wait a minute and try again.",
        )  # fmt: skip
        response.headers["Retry-After"] = RateLimiter.retry_after(wait)
        return response
    user = await run_in_threadpool(services(request).accounts.check_password, username, password)
    if user is None or user.disabled:
        reason = "wrong name or password" if user is None else "the account is disabled"
        await _audit(request, username or "unknown", "signin", username, "denied", reason=reason)
        message = "Wrong user name or password." if user is None else "This account is disabled."
        return _page(request, "signin.html", 401, title="Sign in", next=target, username=username, error=message)
    await _audit(request, user.name, "signin", user.name, "ok")
    response = _see_other(target)
    await sessions.sign_in(request, response, user)
    return response


async def signin_link(request: Request) -> Response:
    """``GET`` shows a button (a link previewer must not use the link up); ``POST`` signs in."""
    token = str(request.path_params["token"])
    if request.method == "GET":
        return _page(request, "signin_link.html", title="Sign in", token=token)
    user = await run_in_threadpool(services(request).accounts.use_signin_link, token)
    if user is None or user.disabled:
        await _audit(request, "unknown", "signin", "link", "denied", reason="unknown, used or expired link")
        return _page(
            request, "notice.html", 400, title="Sign in",
            message="This sign-in link is unknown, used or expired. Ask for a new one with 'hangar signin --web'.",
        )  # fmt: skip
    await _audit(request, user.name, "signin", user.name, "ok", link=True)
    response = _see_other("/settings/profile")
    await sessions.sign_in(request, response, user)
    return response


async def signout(request: Request) -> Response:
    user = _user(request)
    if request.method == "GET":
        if user is None:
            return _see_other("/")
        return _page(request, "signout.html", title="Sign out")
    response = _see_other("/")
    if user is not None:
        await _audit(request, user.name, "signout", user.name, "ok")
    await sessions.sign_out(request, response)
    return response


# -- settings: profile --------------------------------------------------------------------------------


@signed_in
async def settings_profile(request: Request, user: AccountRecord) -> Response:
    accounts = services(request).accounts
    has_password = await run_in_threadpool(accounts.has_password, user.id)
    live = await run_in_threadpool(accounts.sessions, user.id)
    current = sessions.web_state(request).session
    return _page(
        request, "settings_profile.html", title="Profile", user=user, has_password=has_password, sessions=live,
        current=current.id_hash if current else "", error=request.query_params.get("error", ""),
        done=request.query_params.get("done", ""), section="profile",
    )  # fmt: skip


@signed_in
async def change_password(request: Request, user: AccountRecord) -> Response:
    accounts = services(request).accounts
    data = sessions.form(request)
    new, again = data.get("password", ""), data.get("password2", "")
    error = ""
    if (
        await run_in_threadpool(accounts.has_password, user.id)
        and await run_in_threadpool(accounts.check_password, user.name, data.get("current", "")) is None
    ):
        error = "The current password is wrong."
    if not error and new != again:
        error = "The two new passwords differ."
    if not error:
        try:
            await run_in_threadpool(accounts.set_password, user.id, new)
        except AccountError as e:
            error = str(e)
    if error:
        await _audit(request, user.name, "password", user.name, "denied", reason=error)
        return _see_other("/settings/profile?" + urlencode({"error": error}))
    # A new password ends every session (a thief's too); this browser gets a fresh one.
    await run_in_threadpool(accounts.end_sessions, user.id)
    await _audit(request, user.name, "password", user.name, "ok")
    response = _see_other("/settings/profile?done=password")
    await sessions.sign_in(request, response, user)
    return response


@signed_in
async def signout_everywhere(request: Request, user: AccountRecord) -> Response:
    ended = await run_in_threadpool(services(request).accounts.end_sessions, user.id)
    await _audit(request, user.name, "signout", user.name, "ok", everywhere=True, sessions=ended)
    response = _see_other("/signin")
    await sessions.sign_out(request, response)
    return response


# -- settings: keys -------------------------------------------------------------------------------------


def parse_key_line(text: str) -> tuple[str, str]:
    """The key (base64 of its SSH wire encoding) and comment of a pasted ``ssh-ed25519 AAAA… comment``
    line; AccountError with a reason for anything else."""
    text = text.strip()
    if not text:
        raise AccountError("paste a public key: the line in ~/.ollama/id_ed25519.pub or ~/.hangar/id_ed25519.pub")
    if len(text) > MAX_KEY_LINE or "\n" in text:
        raise AccountError("paste one public key line")
    fields = text.split(None, 2)
    try:
        raw = decode_public_key(" ".join(fields[:2]))
    except InvalidKey as e:
        raise AccountError(f"not an ssh-ed25519 public key: {e}") from None
    comment = fields[2].strip() if len(fields) > 2 else ""
    return encode_public_key(raw), comment


@signed_in
async def settings_keys(request: Request, user: AccountRecord) -> Response:
    keys = await run_in_threadpool(services(request).accounts.keys, user.id)
    return _page(
        request, "settings_keys.html", title="Keys", keys=keys, error=request.query_params.get("error", ""),
        added=request.query_params.get("added", ""), section="keys",
    )  # fmt: skip


@signed_in
async def add_key(request: Request, user: AccountRecord) -> Response:
    data = sessions.form(request)
    try:
        key, comment = parse_key_line(data.get("key", ""))
        name = (data.get("name", "").strip() or comment or "web")[:128]
        record = await run_in_threadpool(services(request).accounts.add_key, user.name, key, name)
    except (AccountError, KeyTaken) as e:
        await _audit(request, user.name, "key.add", "", "denied", reason=str(e))
        return _see_other("/settings/keys?" + urlencode({"error": str(e)}))
    await _audit(request, user.name, "key.add", record.fingerprint, "ok")
    return _see_other("/settings/keys?" + urlencode({"added": record.fingerprint}))


@signed_in
async def remove_key(request: Request, user: AccountRecord) -> Response:
    fp = sessions.form(request).get("fingerprint", "")
    if not await run_in_threadpool(services(request).accounts.remove_key, user.id, fp):
        await _audit(request, user.name, "key.remove", fp, "denied", reason="no such key")
        return _see_other("/settings/keys?" + urlencode({"error": f"no key {fp} on this account"}))
    await _audit(request, user.name, "key.remove", fp, "ok")
    return _see_other("/settings/keys")


# -- settings: robots --------------------------------------------------------------------------------------


async def _managed(request: Request, user: AccountRecord) -> list[str]:
    """The namespaces whose settings ``user`` may change: their own and the organisations they own
    (``Accounts.manageable`` decides each, as for the API)."""
    orgs = await run_in_threadpool(services(request).accounts.memberships, user.id)
    out = [user.name]
    for org in orgs:
        if await _manageable(request, user, org) is not None:
            out.append(org)
    return out


async def _manageable(request: Request, user: AccountRecord, namespace: str) -> AccountRecord | None:
    try:
        return await run_in_threadpool(services(request).accounts.manageable, user, namespace)
    except (NoSuchNamespace, NotAnOwner):
        return None


@signed_in
async def settings_robots(request: Request, user: AccountRecord) -> Response:
    return await _robots_page(request, user)


async def _robots_page(request: Request, user: AccountRecord, created: dict[str, str] | None = None) -> Response:
    namespaces = await _managed(request, user)
    robots = {ns: await run_in_threadpool(services(request).accounts.robots, ns) for ns in namespaces}
    return _page(
        request, "settings_robots.html", title="Robots", namespaces=namespaces, robots=robots, scopes=ROBOT_SCOPES,
        created=created, error=request.query_params.get("error", ""), section="robots",
    )  # fmt: skip


@signed_in
async def create_robot(request: Request, user: AccountRecord) -> Response:
    data = sessions.form(request)
    namespace = data.get("namespace", "")
    if await _manageable(request, user, namespace) is None:
        await _audit(request, user.name, "robot.create", namespace, "denied", reason="not an owner")
        return _see_other("/settings/robots?" + urlencode({"error": f"you may not manage {namespace!r}"}))
    try:
        days = int(data.get("days", "30"))
        if not 1 <= days <= ROBOT_MAX_DAYS:
            raise ValueError
    except ValueError:
        return _see_other("/settings/robots?" + urlencode({"error": f"expiry: 1 to {ROBOT_MAX_DAYS} days"}))
    try:
        robot, token = await run_in_threadpool(
            services(request).accounts.create_robot, namespace, data.get("name", "").strip(),
            data.get("scope", "pull"), days * 86400.0,
        )  # fmt: skip
    except AccountError as e:
        await _audit(request, user.name, "robot.create", namespace, "denied", reason=str(e))
        return _see_other("/settings/robots?" + urlencode({"error": str(e)}))
    await _audit(request, user.name, "robot.create", robot.username, "ok", scope=robot.scope)
    # The token is shown once, on this answer (never in a URL, never stored in clear).
    return await _robots_page(request, user, {"username": robot.username, "token": token})


@signed_in
async def remove_robot(request: Request, user: AccountRecord) -> Response:
    data = sessions.form(request)
    namespace, name = data.get("namespace", ""), data.get("name", "")
    if await _manageable(request, user, namespace) is None:
        await _audit(request, user.name, "robot.delete", namespace, "denied", reason="not an owner")
        return _see_other("/settings/robots?" + urlencode({"error": f"you may not manage {namespace!r}"}))
    if not await run_in_threadpool(services(request).accounts.delete_robot, namespace, name):
        return _see_other("/settings/robots?" + urlencode({"error": f"no robot {namespace}+{name}"}))
    await _audit(request, user.name, "robot.delete", f"{namespace}+{name}", "ok")
    return _see_other("/settings/robots")


# -- settings: an organisation ---------------------------------------------------------------------------


@signed_in
async def settings_org(request: Request, user: AccountRecord) -> Response:
    org = await _manageable(request, user, str(request.path_params["org"]))
    if org is None or org.kind != "org":
        return _page(request, "error.html", 404, title="404", code=404, message="No such organisation you own.")
    data = sessions.form(request) if request.method == "POST" else {}
    accounts = services(request).accounts
    error = ""
    if request.method == "POST":
        action = data.get("action", "")
        try:
            if action == "visibility":
                visibility = data.get("default_visibility", "")
                await run_in_threadpool(accounts.set_default_visibility, org.name, visibility)
                await _audit(request, user.name, "visibility", org.name, "ok", default=visibility)
            elif action == "member":
                member, role = data.get("username", "").strip(), data.get("role", "")
                await run_in_threadpool(accounts.set_member, org.name, member, role)
                await _audit(request, user.name, "member.set", f"{org.name}/{member}", "ok", role=role)
            elif action == "remove":
                member = data.get("username", "")
                if not await run_in_threadpool(accounts.remove_member, org.name, member):
                    raise AccountError(f"{member!r} is not a member of {org.name!r}")
                await _audit(request, user.name, "member.remove", f"{org.name}/{member}", "ok")
            else:
                raise AccountError("unknown action")
        except AccountError as e:
            error = str(e)
            await _audit(request, user.name, f"org.{action}"[:32], org.name, "denied", reason=error)
        if not error:
            return _see_other(f"/settings/orgs/{quote(org.name)}")
    members = await run_in_threadpool(accounts.members, org.name)
    org = await run_in_threadpool(accounts.get, org.name) or org
    return _page(
        request, "settings_org.html", 400 if error else 200, title=f"{org.name} settings", org=org, members=members,
        roles=ROLES, visibilities=VISIBILITIES, error=error, section="",
    )  # fmt: skip


# -- settings: a model ----------------------------------------------------------------------------------


@signed_in
async def settings_model(request: Request, user: AccountRecord) -> Response:
    """A model's visibility (``Accounts.manageable``, as ``PUT /hangar/v1/repositories``) and the
    deletion of a tag or of every tag (the ``delete`` action of ``Authority.allowed``, as
    ``DELETE /v2/…/manifests``). Who may read it but do neither gets 403; who may not read it, 404."""
    svc = services(request)
    namespace, model = str(request.path_params["namespace"]), str(request.path_params["model"])
    name = f"{namespace}/{model}"
    if not is_valid_namespace(namespace) or not is_valid_model(model):
        return _page(request, "error.html", 404, title="404", code=404, message="No such model.")
    session = sessions.web_state(request).session
    assert session is not None
    principal = sessions.principal_of(session)
    allowed = ALL if svc.settings.auth == "off" else await run_in_threadpool(svc.authority.allowed, principal, name)
    row = await run_in_threadpool(svc.meta.model, name)
    if row is None or "pull" not in allowed:
        return _page(request, "error.html", 404, title="404", code=404, message="No such model.")
    name = row.name
    may_manage = await _manageable(request, user, namespace) is not None
    may_delete = "delete" in allowed
    if not may_manage and not may_delete:
        await _audit(request, user.name, "settings", name, "denied", reason="no permission")
        return _page(
            request, "error.html", 403, title="403", code=403, message="You may not change this model's settings."
        )
    error = ""
    if request.method == "POST":
        data = sessions.form(request)
        action = data.get("action", "")
        if action == "visibility" and may_manage:
            visibility = data.get("visibility", "")
            if visibility not in VISIBILITIES:
                error = f"visibility must be one of {', '.join(VISIBILITIES)}"
            else:
                await run_in_threadpool(svc.meta.set_repository_visibility, name, visibility)
                await _audit(request, user.name, "visibility", name, "ok", visibility=visibility)
        elif action == "page" and may_manage:
            readme = data.get("readme", "")
            if len(readme.encode()) > MAX_README:
                error = f"the README may be at most {MAX_README // 1024} KiB"
            else:
                description = data.get("description", "")
                await run_in_threadpool(svc.meta.set_repository_page, name, description=description, readme=readme)
                await _audit(request, user.name, "page", name, "ok", description=description[:80])
        elif action == "delete_tag" and may_delete:
            tag = data.get("tag", "")
            if not await run_in_threadpool(svc.meta.delete_tag, name, tag):
                error = f"no tag {tag!r}"
            else:
                await _audit(request, user.name, "delete", f"{name}:{tag}", "ok", kind="tag")
        elif action == "delete_model" and may_delete:
            if data.get("confirm", "").strip() != name:
                error = f"type {name} to confirm"
            else:
                for each in await run_in_threadpool(svc.meta.model_tags, name):
                    await run_in_threadpool(svc.meta.delete_manifest, name, Digest.parse(each.digest))
                await _audit(request, user.name, "delete", name, "ok", kind="model")
                return _see_other(f"/{quote(namespace)}")
        else:
            await _audit(request, user.name, "settings", name, "denied", reason=f"no permission for {action!r}")
            return _page(request, "error.html", 403, title="403", code=403, message="You may not do that.")
        if not error:
            return _see_other(f"/settings/models/{quote(namespace)}/{quote(model)}")
    tags = await run_in_threadpool(svc.meta.model_tags, name)
    visibility = row.visibility
    description, readme = await run_in_threadpool(svc.meta.repository_page, name)
    return _page(
        request, "settings_model.html", 400 if error else 200, title=f"{row.name} settings", name=name,
        namespace=namespace, model=model, tags=tags, visibility=visibility, visibilities=VISIBILITIES,
        may_manage=may_manage, may_delete=may_delete, error=error, section="", description=description,
        readme=readme,
    )  # fmt: skip


# -- Ollama's connect URL ---------------------------------------------------------------------------------


def connect_key(encoded: str) -> tuple[str, str]:
    """The key and comment in a connect URL's ``key``: base64url, unpadded, of the whole
    ``ssh-ed25519 AAAA…`` line (protocol spec §5.6). AccountError for anything else."""
    encoded = encoded.strip()
    if not encoded or len(encoded) > 2 * MAX_KEY_LINE:
        raise AccountError("the link has no key")
    try:
        line = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise AccountError("the link's key is not base64url") from None
    return parse_key_line(line)


async def connect(request: Request) -> Response:
    params = request.query_params if request.method == "GET" else sessions.form(request)
    device = (params.get("name") or "").strip()[:128] or "a device"
    try:
        key, _comment = connect_key(params.get("key") or "")
    except AccountError as e:
        return _page(request, "notice.html", 400, title="Connect", message=f"This connect link is broken: {e}.")
    user = _user(request)
    if user is None:
        return _signin_redirect(request)
    accounts = services(request).accounts
    fp = fingerprint(key)
    owner = await run_in_threadpool(lambda: accounts.user_for_key(key, touch=False))
    if request.method == "GET" or owner is not None:
        state = "mine" if owner is not None and owner.id == user.id else "taken" if owner is not None else "ask"
        return _page(
            request, "connect.html", 200 if state != "taken" else 409, title="Connect", device=device, fingerprint=fp,
            key=params.get("key", ""), state=state,
        )  # fmt: skip
    try:
        await run_in_threadpool(accounts.add_key, user.name, key, device)
    except (AccountError, KeyTaken) as e:
        await _audit(request, user.name, "key.add", fp, "denied", reason=str(e), via="connect")
        return _page(request, "notice.html", 409, title="Connect", message=str(e))
    await _audit(request, user.name, "key.add", fp, "ok", via="connect", device=device)
    return _page(request, "connect.html", title="Connected", device=device, fingerprint=fp, key="", state="done")


async def settings_home(request: Request) -> Response:
    return _see_other("/settings/profile")


routes = [
    Route("/signup", signup, methods=["GET", "POST"]),
    Route("/signin", signin, methods=["GET", "POST"]),
    Route("/signin/link/{token}", signin_link, methods=["GET", "POST"]),
    Route("/signout", signout, methods=["GET", "POST"]),
    Route("/connect", connect, methods=["GET", "POST"]),
    Route("/settings", settings_home, methods=["GET"]),
    Route("/settings/profile", settings_profile, methods=["GET"]),
    Route("/settings/password", change_password, methods=["POST"]),
    Route("/settings/signout-everywhere", signout_everywhere, methods=["POST"]),
    Route("/settings/keys", settings_keys, methods=["GET"]),
    Route("/settings/keys", add_key, methods=["POST"]),
    Route("/settings/keys/remove", remove_key, methods=["POST"]),
    Route("/settings/robots", settings_robots, methods=["GET"]),
    Route("/settings/robots", create_robot, methods=["POST"]),
    Route("/settings/robots/remove", remove_robot, methods=["POST"]),
    Route("/settings/orgs/{org}", settings_org, methods=["GET", "POST"]),
    Route("/settings/models/{namespace}/{model}", settings_model, methods=["GET", "POST"]),
]
