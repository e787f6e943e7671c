"""The registry token dance, as an ``httpx.Auth`` flow.

A request to the registry's origin goes out with the token held (if any). A ``401`` with a
``Bearer`` challenge sends a token request to the challenge's realm, signed with this machine's
ed25519 key exactly as Ollama signs it (``formats.auth``) when the user signed in to this
registry, anonymously otherwise; then the request is sent once more with the new token. A token
about to expire is renewed before the next request, so long pushes keep going.

What may be signed and where credentials may go is client.credentials: the realm must be on the
registry's own origin (scheme, host and port; Ollama checks host and port), the token request
carries only the scopes the caller said it needs and the registry's own host as ``service``, and a
request to any other origin (a ``Link``, an upload ``Location``, a redirect) goes without the
token, while one from https to plain http is refused."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence

import httpx

from client import errors
from client.credentials import display, limit_scopes, refuse_downgrade, registry_host, same_origin
from client.keys import Identity
from client.limits import ERROR_BODY_LIMIT, TOKEN_LIMIT, read_body, read_body_sync
from formats.auth import go_query, parse_challenge, token_signing_string

RENEW_BEFORE = 30.0  # seconds
TOKEN_REQUEST = "hangar_token_request"  # marks the requests this flow makes to the token endpoint


# Query parameters of a realm the client sets itself: a realm may not choose them.
_OWN_PARAMS = {"service", "scope", "ts", "nonce"}


class RegistryAuth(httpx.Auth):
    """Tokens for one registry (``base``, its ``scheme://host[:port]``) for what the caller said it
    will do there (``scopes``, e.g. ``["repository:ns/model:pull"]``). ``identity`` is None where
    the key must not sign (see client.credentials.signs_for)."""

    def __init__(self, base: str, identity: Callable[[], Identity | None], scopes: Sequence[str]) -> None:
        self._base = httpx.URL(base)
        self._service = registry_host(base)
        self._scopes = list(scopes)
        self._identity = identity
        self._token: str | None = None
        self._expires = 0.0
        self._challenge: dict[str, str] | None = None

    def _token_request(self, challenge: dict[str, str]) -> httpx.Request:
        realm = httpx.URL(challenge["realm"])
        params = [(k, v) for k, v in realm.params.multi_items() if k not in _OWN_PARAMS]
        params.append(("service", self._service))
        params += [("scope", s) for s in limit_scopes(challenge.get("scope", ""), self._scopes)]
        params.append(("ts", str(int(time.time()))))
        params.append(("nonce", base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")))
        url = str(realm.copy_with(query=go_query(params).encode()))
        headers = {}
        identity = self._identity()
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
        if not realm.is_absolute_url or not same_origin(realm, request.url):
            raise errors.Unauthorized(
                f'realm host "{display(realm) if realm.is_absolute_url else realm}" does not match original host '
                f'"{display(request.url)}": the registry must issue tokens on its own origin'
            )
        return challenge

    def _accept(self, response: httpx.Response) -> None:
        """Take the token from the token endpoint's answer, or raise why there is none."""
        if response.status_code >= 400:
            raise errors.from_response(response.status_code, response.content, "get a registry token")
        try:
            doc = response.json()
            self._token = str(doc["token"])
        except (ValueError, KeyError, TypeError):
            raise errors.Unauthorized("the registry's token endpoint answered without a token") from None
        self._expires = time.monotonic() + float(doc.get("expires_in") or 60)

    @property
    def token(self) -> str | None:
        return self._token

    def headers_for(self, url: str | httpx.URL) -> dict[str, str]:
        """The ``Authorization`` header for a request to ``url`` made outside httpx: the token on
        the registry's own origin, nothing elsewhere; a URL on plain http after https is refused."""
        refuse_downgrade(self._base, url, "fetch from the registry")
        if self._token and same_origin(url, self._base):
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    def _authorize(self, request: httpx.Request) -> None:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"

    def _flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not same_origin(request.url, self._base):
            # A URL the registry handed us on another origin: no credentials of ours go there,
            # and its challenges are not ours to answer.
            refuse_downgrade(self._base, request.url, "follow the registry")
            request.headers.pop("Authorization", None)
            yield request
            return
        if self._challenge is not None and self._token and time.monotonic() > self._expires - RENEW_BEFORE:
            self._accept((yield self._token_request(self._challenge)))
        self._authorize(request)
        response = yield request
        if response.status_code != 401:
            return
        challenge = self._challenge_for(request, response)
        if challenge is None:
            return
        self._challenge = challenge
        self._accept((yield self._token_request(challenge)))
        self._authorize(request)
        yield request

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
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return
            read_body_sync(response, ERROR_BODY_LIMIT, "registry challenge", truncate=True)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self._flow(request)
        outgoing = next(flow)
        while True:
            response = yield outgoing
            if outgoing.extensions.get(TOKEN_REQUEST):
                await read_body(response, TOKEN_LIMIT, "get a registry token")
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return
            await read_body(response, ERROR_BODY_LIMIT, "registry challenge", truncate=True)


def bearer_headers(http: httpx.AsyncClient, url: str | httpx.URL) -> dict[str, str]:
    """The ``Authorization`` header for a request to ``url`` made outside httpx (the blob bytes,
    through aiohttp): see ``RegistryAuth.headers_for``."""
    auth = http.auth
    return auth.headers_for(url) if isinstance(auth, RegistryAuth) else {}
