"""The registry's authentication, as an ``httpx.Auth`` flow: the Ollama token dance, the Docker
token flow and HTTP Basic, chosen from the registry's challenge.

A request to the registry's origin goes out with what the flow holds (a token, or Basic
credentials). A ``401`` then says what the registry wants:

- ``Basic``: the username and password stored for the registry (client.logins) go with every
  request to its origin; none stored, or refused, is an ``Unauthorized`` naming the registry;
- ``Bearer``: a token request to the challenge's realm, carrying, in this order, the stored
  username and password as HTTP Basic (Docker's token flow: Harbor, GHCR, GitLab, a Hangar
  robot), else this machine's ed25519 signature exactly as Ollama makes it (``formats.auth``) when
  the user signed in to this registry, else nothing (an anonymous token). With stored credentials
  the request asks for a refresh token (``offline_token=true``); one offered, or a stored identity
  token, renews tokens with an OAuth2 ``POST`` (``grant_type=refresh_token``) instead of
  sending the password again.

A token about to expire is renewed before the next request, so long pushes keep going.

What may be signed and where credentials may go is client.credentials: a realm on the registry's
own origin (scheme, host and port) gets whatever the registry would; a realm on another origin
(Docker Hub's auth.docker.io) only the registry's stored username and password, over https or
loopback, never the signature. The token request carries only the scopes the caller said it needs;
its ``service`` is the registry's own host on its origin, the challenge's elsewhere. A request to
any other origin (a ``Link``, an upload ``Location``, a redirect) goes without credentials, and
one from https to plain http is refused."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from urllib.parse import urlencode

import httpx

from client import errors
from client.credentials import (
    display,
    limit_scopes,
    realm_allowed,
    refuse_downgrade,
    registry_host,
    same_origin,
)
from client.keys import Identity
from client.limits import ERROR_BODY_LIMIT, TOKEN_LIMIT, read_body, read_body_sync
from client.logins import Login
from formats.auth import go_query, parse_challenge, token_signing_string
from formats.errorcodes import parse_envelope

RENEW_BEFORE = 30.0  # seconds
TOKEN_REQUEST = "hangar_token_request"  # marks the requests this flow makes to the token endpoint
CLIENT_ID = "hangar"  # the OAuth2 client_id of Docker's token flow

# Query parameters of a realm the client sets itself: a realm may not choose them.
_OWN_PARAMS = {"service", "scope", "ts", "nonce", "offline_token", "client_id"}


def _no_login() -> Login | None:
    return None


class RegistryAuth(httpx.Auth):
    """Credentials for one registry (``base``, its ``scheme://host[:port]``) for what the caller
    said it will do there (``scopes``, e.g. ``["repository:ns/model:pull"]``). ``identity`` gives
    None where the key must not sign (see client.credentials.signs_for); ``login`` the stored
    username and password for the registry (client.logins.find), loaded at its first challenge."""

    def __init__(
        self,
        base: str,
        identity: Callable[[], Identity | None],
        scopes: Sequence[str],
        login: Callable[[], Login | None] = _no_login,
    ) -> None:
        self._base = httpx.URL(base)
        self._service = registry_host(base)
        self._scopes = list(scopes)
        self._identity = identity
        self._login_loader = login
        self._login: list[Login | None] = []
        self._token: str | None = None
        self._refresh: str | None = None  # an OAuth2 refresh token from the realm
        self._basic: str | None = None  # the Authorization for a registry that wants Basic
        self._expires = 0.0
        self._challenge: dict[str, str] | None = None
        self._token_from_login = False  # the token was issued for the stored login

    def login(self) -> Login | None:
        if not self._login:
            self._login.append(self._login_loader())
        return self._login[0]

    def _service_for(self, challenge: dict[str, str]) -> str:
        # On the registry's origin the service is the registry's own host (a hostile registry may
        # not name another in what the key signs); a token server elsewhere serves many
        # registries and the challenge says which one (auth.docker.io: registry.docker.io).
        if same_origin(challenge["realm"], self._base):
            return self._service
        return challenge.get("service") or self._service

    def _token_request(self, challenge: dict[str, str]) -> httpx.Request:
        realm = httpx.URL(challenge["realm"])
        own_origin = same_origin(realm, self._base)
        login = self.login()
        scopes = limit_scopes(challenge.get("scope", ""), self._scopes)
        refresh = self._refresh or (login.identity_token if login else None)
        if refresh:
            form = [("grant_type", "refresh_token"), ("refresh_token", refresh),
                    ("service", self._service_for(challenge)), ("client_id", CLIENT_ID)]  # fmt: skip
            form.append(("scope", " ".join(scopes)))
            return httpx.Request(
                "POST",
                realm,
                content=urlencode(form).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                extensions={TOKEN_REQUEST: "refresh"},
            )
        params = [(k, v) for k, v in realm.params.multi_items() if k not in _OWN_PARAMS]
        params.append(("service", self._service_for(challenge)))
        params += [("scope", s) for s in scopes]
        headers = {}
        if login is not None and login.username:
            params += [("offline_token", "true"), ("client_id", CLIENT_ID)]
            headers["Authorization"] = _basic(login)
            return httpx.Request(
                "GET", realm.copy_with(query=go_query(params).encode()), headers=headers,
                extensions={TOKEN_REQUEST: "basic"},
            )  # fmt: skip
        params.append(("ts", str(int(time.time()))))
        params.append(("nonce", base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")))
        url = str(realm.copy_with(query=go_query(params).encode()))
        identity = self._identity() if own_origin else None  # the signature never leaves the origin
        if identity is not None:
            headers["Authorization"] = identity.authorization(token_signing_string(url))
        return httpx.Request("GET", url, headers=headers, extensions={TOKEN_REQUEST: True})

    def _challenge_for(self, request: httpx.Request, response: httpx.Response) -> dict[str, str] | None:
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            return None
        try:
            realm = httpx.URL(challenge["realm"])
        except httpx.InvalidURL:
            raise errors.Unauthorized(f"the registry's token realm is not a URL: {challenge['realm']!r}") from None
        refuse_downgrade(request.url, realm, "get a registry token")
        if not realm.is_absolute_url:
            raise errors.Unauthorized(f'{display(self._base)} named a token realm that is not a URL: "{realm}"')
        if not same_origin(realm, request.url):
            why = realm_allowed(self._base, realm)
            if why:
                raise errors.Unauthorized(
                    f'realm host "{display(realm)}" does not match original host "{display(request.url)}": {why}'
                )
        return challenge

    def _accept(self, request: httpx.Request, response: httpx.Response) -> bool:
        """Take the token from the token endpoint's answer (True), or raise why there is none;
        False when a refresh token of ours was refused and the password should be sent again."""
        kind = request.extensions.get(TOKEN_REQUEST)
        if response.status_code >= 400:
            if kind == "refresh" and self._refresh and response.status_code in (400, 401, 404, 405):
                # A refresh token that expired or a realm without OAuth2: back to the password.
                self._refresh = None
                return False
            login = self.login()
            if kind in ("basic", "refresh") and login is not None and response.status_code in (400, 401, 403):
                raise self._refused(login, response.content)
            raise errors.from_response(response.status_code, response.content, "get a registry token")
        self._token_from_login = kind in ("basic", "refresh")
        try:
            doc = response.json()
            self._token = str(doc.get("token") or doc["access_token"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise errors.Unauthorized("the registry's token endpoint answered without a token") from None
        if isinstance(doc.get("refresh_token"), str) and doc["refresh_token"]:
            self._refresh = doc["refresh_token"]
        try:
            self._expires = time.monotonic() + float(doc.get("expires_in") or 60)
        except (TypeError, ValueError):
            self._expires = time.monotonic() + 60
        return True

    def _refused(self, login: Login, body: bytes) -> errors.Unauthorized:
        found = parse_envelope(body)
        detail = errors.printable(found[0][1] if found else body.decode(errors="replace").strip()[:200])
        who = f"the credentials of '{login.username}'" if login.username else "the identity token"
        return errors.Unauthorized(
            f"{display(self._base)} refused {who} (from {login.source})"
            + (f": {detail}" if detail else "")
            + f". Run 'hangar login {self._service}' again"
        )

    @property
    def token(self) -> str | None:
        return self._token

    def headers_for(self, url: str | httpx.URL) -> dict[str, str]:
        """The ``Authorization`` header for a request to ``url`` made outside httpx: the token (or
        Basic credentials) on the registry's own origin, nothing elsewhere; a URL on plain http
        after https is refused."""
        refuse_downgrade(self._base, url, "fetch from the registry")
        if not same_origin(url, self._base):
            return {}
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        if self._basic:
            return {"Authorization": self._basic}
        return {}

    def _authorize(self, request: httpx.Request) -> None:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        elif self._basic:
            request.headers["Authorization"] = self._basic

    def _flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not same_origin(request.url, self._base):
            # A URL the registry handed us on another origin: no credentials of ours go there,
            # and its challenges are not ours to answer.
            refuse_downgrade(self._base, request.url, "follow the registry")
            request.headers.pop("Authorization", None)
            yield request
            return
        if self._challenge is not None and self._token and time.monotonic() > self._expires - RENEW_BEFORE:
            yield from self._fetch_token(self._challenge)
        self._authorize(request)
        response = yield request
        if response.status_code != 401:
            return
        header = response.headers.get("www-authenticate", "")
        if header[:6].lower() == "basic " or header.lower() == "basic":
            if self._basic is not None:  # sent and refused
                login = self.login()
                assert login is not None
                raise self._refused(login, response.content)
            self._basic = self._basic_for_registry()
            self._authorize(request)
            response = yield request
            if response.status_code == 401:
                login = self.login()
                assert login is not None
                raise self._refused(login, response.content)
            return
        challenge = self._challenge_for(request, response)
        if challenge is None:
            return
        self._challenge = challenge
        yield from self._fetch_token(challenge)
        self._authorize(request)
        response = yield request
        login = self.login()
        if response.status_code == 401 and self._token_from_login and login is not None:
            # The token server took the login but granted less than this needs (Docker Hub,
            # Harbor and the reference registry's issuers answer a scope they refuse with a
            # token without it): "sign in first" would be wrong advice.
            wanted = " ".join(limit_scopes(challenge.get("scope", ""), self._scopes)) or "access"
            who = f"'{login.username}'" if login.username else "the identity token"
            raise errors.Denied(
                f"{display(self._base)} did not grant {who} (logged in, from {login.source}) {wanted}: "
                "access denied; you have no permission for this repository"
            )

    def _fetch_token(self, challenge: dict[str, str]) -> Generator[httpx.Request, httpx.Response, None]:
        token_request = self._token_request(challenge)
        if not self._accept(token_request, (yield token_request)):
            token_request = self._token_request(challenge)  # without the refused refresh token
            self._accept(token_request, (yield token_request))

    def _basic_for_registry(self) -> str:
        login = self.login()
        if login is None or not login.username:
            raise errors.Unauthorized(
                f"{display(self._base)} asks for a username and password: run 'hangar login {self._service}'"
            )
        return _basic(login)

    # httpx reads response bodies only when told to; the token answers must be read, while
    # blob bodies must not be, so the two flows below read exactly the token responses, within
    # client.limits' caps. httpx itself reads the body of each response a flow goes on from (the
    # 401): reading it first, capped, leaves httpx nothing to read.

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self._flow(request)
        outgoing = next(flow)
        while True:
            response = yield outgoing
            if outgoing.extensions.get(TOKEN_REQUEST):
                read_body_sync(response, TOKEN_LIMIT, "get a registry token")
            elif response.status_code == 401:
                read_body_sync(response, ERROR_BODY_LIMIT, "registry challenge", truncate=True)
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self._flow(request)
        outgoing = next(flow)
        while True:
            response = yield outgoing
            if outgoing.extensions.get(TOKEN_REQUEST):
                await read_body(response, TOKEN_LIMIT, "get a registry token")
            elif response.status_code == 401:
                await read_body(response, ERROR_BODY_LIMIT, "registry challenge", truncate=True)
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return


def _basic(login: Login) -> str:
    return "Basic " + base64.b64encode(f"{login.username}:{login.password}".encode()).decode()


def bearer_headers(http: httpx.AsyncClient, url: str | httpx.URL) -> dict[str, str]:
    """The ``Authorization`` header for a request to ``url`` made outside httpx (the blob bytes,
    through aiohttp): see ``RegistryAuth.headers_for``."""
    auth = http.auth
    return auth.headers_for(url) if isinstance(auth, RegistryAuth) else {}
