"""Browser sessions and CSRF protection for the web site (issue #11).

- A session is a row in ``web_session`` (``registry.accounts``), named by the sha256 of a random
  value that only the browser's cookie holds: ``hangar_session``, ``HttpOnly``, ``SameSite=Lax``,
  ``Path=/``, and ``Secure`` when the request came over https (directly or through a trusted
  proxy). Signing out deletes the row, so a copied cookie dies with it; "sign out everywhere"
  deletes every row of the user.
- Every POST to one of the site's forms must carry a ``csrf`` form field equal to the token of this browser: an
  HMAC (key: the ``web-csrf`` secret shared by every worker) of the session's cookie value or,
  before sign-in, of a random ``hangar_csrf`` cookie set when a form is first shown. A POST
  without it, with a wrong one, or with a body that is not a small url-encoded form is refused
  with 403 before any page code runs (``WebSessions``).
- The middleware is the site's own: the API (``/v2``, ``/token``, ``/hangar/v1``) is routed
  before the site is reached, so it never reads these cookies. A session gives the pages a
  ``registry.auth.Principal`` for reads (``scope["state"]["web_viewer"]``)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.accounts import SESSION_TTL, AccountRecord, SessionRecord
from registry.api.common import services
from registry.auth import Principal

SESSION_COOKIE = "hangar_session"
CSRF_COOKIE = "hangar_csrf"
CSRF_FIELD = "csrf"
MAX_FORM = 320 * 1024  # the site's forms hold a name, a password, a public key or a model's README (256 KiB)
# Paths whose requests need no session lookup (no database read for a stylesheet).
_NO_SESSION = ("/static/",)

Refuse = Callable[[Request, int, str], Response]


@dataclass
class WebState:
    """What the middleware learnt about this request, for the pages (``web_state(request)``)."""

    session_token: str | None = None
    session: SessionRecord | None = None
    anon_token: str | None = None  # the hangar_csrf cookie's value (or a new one to set)
    set_anon_cookie: bool = False
    key: bytes = b""
    secure: bool = False
    form: dict[str, str] | None = None  # the POST's fields, parsed once

    @property
    def user(self) -> AccountRecord | None:
        return self.session.user if self.session is not None else None

    def csrf_token(self) -> str:
        """This browser's CSRF token (before sign-in, creating the cookie it is derived from)."""
        if self.session_token is not None:
            return _mac(self.key, "session", self.session_token)
        if self.anon_token is None:
            self.anon_token = secrets.token_urlsafe(24)
            self.set_anon_cookie = True
        return _mac(self.key, "anonymous", self.anon_token)

    def csrf_ok(self, given: str) -> bool:
        expected = []
        if self.session_token is not None:
            expected.append(_mac(self.key, "session", self.session_token))
        if self.anon_token is not None and not self.set_anon_cookie:
            expected.append(_mac(self.key, "anonymous", self.anon_token))
        return any(hmac.compare_digest(given.encode(), e.encode()) for e in expected)


def _mac(key: bytes, kind: str, value: str) -> str:
    return hmac.new(key, f"{kind}\n{value}".encode(), hashlib.sha256).hexdigest()


def web_state(request: Request) -> WebState:
    state: WebState | None = request.scope.get("state", {}).get("web")
    if state is None:  # a page served without the middleware (never, but never a crash)
        state = WebState()
        request.scope.setdefault("state", {})["web"] = state
    return state


def principal_of(session: SessionRecord) -> Principal:
    user = session.user
    return Principal("user", user.name, account_id=user.id, is_admin=user.is_admin)


def _cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is as good as none
                continue
    return {k: m.value for k, m in jar.items()}


def cookie_header(name: str, value: str, *, secure: bool, max_age: int) -> tuple[bytes, bytes]:
    parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Lax", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return b"set-cookie", "; ".join(parts).encode("latin-1")


async def _key(request: Request) -> bytes:
    app_state = request.app.state
    key: bytes | None = getattr(app_state, "csrf_key", None)
    if key is None:
        key = await run_in_threadpool(services(request).meta.secret, "web-csrf")
        app_state.csrf_key = key
    return key


class WebSessions:
    """The site's middleware: reads the session cookie, checks CSRF tokens on every POST, and
    sets the cookies the pages asked for."""

    def __init__(self, app: ASGIApp, refuse: Refuse) -> None:
        self.app = app
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(_NO_SESSION):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        cookies = _cookies(scope)
        state = WebState(key=await _key(request), secure=request.url.scheme == "https")
        scope.setdefault("state", {})["web"] = state
        token = cookies.get(SESSION_COOKIE)
        if token:
            session = await run_in_threadpool(services(request).accounts.session, token)
            if session is not None:
                state.session_token, state.session = token, session
                # Read by the pages and by registry.api.common.readable_namespaces.
                scope["state"]["web_viewer"] = principal_of(session)
        state.anon_token = cookies.get(CSRF_COOKIE) or None
        if scope["method"] == "POST" and not _takes_post(scope):
            # No form handler here: the page answers 405 (or 404) as for any other method.
            await self.app(scope, _replay(b""), send)
            return
        if scope["method"] == "POST":
            body, problem = await _read_form(receive, scope)
            if problem is None:
                state.form = body
                if not state.csrf_ok(body.get(CSRF_FIELD, "")):
                    problem = (403, "This form has expired or did not come from this site: reload it and try again.")
            if problem is not None:
                response = self.refuse(request, *problem)
                await response(scope, receive, send)
                return
            receive = _replay(b"")  # the page reads the parsed form from web_state

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if state.set_anon_cookie and state.anon_token:
                    headers.append(cookie_header(CSRF_COOKIE, state.anon_token, secure=state.secure, max_age=86400))
                if token:
                    # Pages for a browser with a session (or one that just ended) are its own.
                    headers.append((b"cache-control", b"private, no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cookies)


def _takes_post(scope: Scope) -> bool:
    """Whether one of the site's routes takes this POST (``scope["app"]`` is the site)."""
    return any(route.matches(scope)[0] == Match.FULL for route in scope["app"].router.routes)


async def _read_form(receive: Receive, scope: Scope) -> tuple[dict[str, str], tuple[int, str] | None]:
    content_type = dict(scope.get("headers", [])).get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type != b"application/x-www-form-urlencoded":
        return {}, (403, "Forms on this site are sent url-encoded, with the form's token.")
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_FORM:
            return {}, (413, "That form is too large.")
        if not message.get("more_body", False):
            break
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return {}, (400, "That form could not be read.")
    return {k: v[0] for k, v in fields.items()}, None


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def form(request: Request) -> dict[str, str]:
    """The POST's fields (CSRF-checked by the middleware)."""
    return web_state(request).form or {}


async def sign_in(request: Request, response: Response, user: AccountRecord) -> None:
    """Start a session for ``user`` and set its cookie on ``response`` (a new value: a session
    cookie planted before sign-in is never promoted)."""
    state = web_state(request)
    agent = request.headers.get("user-agent", "")
    address = request.client.host if request.client else ""
    token = await run_in_threadpool(services(request).accounts.start_session, user.id, agent, address)
    name, value = cookie_header(SESSION_COOKIE, token, secure=state.secure, max_age=int(SESSION_TTL.total_seconds()))
    response.headers.append(name.decode(), value.decode("latin-1"))


async def sign_out(request: Request, response: Response) -> None:
    """End this browser's session in the database and clear its cookie."""
    state = web_state(request)
    if state.session_token is not None:
        await run_in_threadpool(services(request).accounts.end_session, state.session_token)
    name, value = cookie_header(SESSION_COOKIE, "", secure=state.secure, max_age=0)
    response.headers.append(name.decode(), value.decode("latin-1"))


def context(request: Request) -> dict[str, Any]:
    """Template variables for every page: the signed-in user and the CSRF token maker."""
    state = web_state(request)
    return {"viewer": state.user, "csrf_token": state.csrf_token}
