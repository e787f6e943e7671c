"""The registry token dance, as an ``httpx.Auth`` flow.

A request goes out with the token held (if any). A ``401`` with a ``Bearer`` challenge sends a
token request to the challenge's realm, signed with this machine's ed25519 key exactly as Ollama
signs it (``registry.oci.auth``), or anonymously when there is no key; then the request is sent
once more with the new token. The realm must be on the registry's own host, as Ollama insists.
A token about to expire is renewed before the next request, so long pushes keep going."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncGenerator, Callable, Generator

import httpx

from client import errors
from client.keys import Identity
from registry.oci.auth import go_query, parse_challenge, token_signing_string

RENEW_BEFORE = 30.0  # seconds
TOKEN_REQUEST = "hangar_token_request"  # marks the requests this flow makes to the token endpoint


class RegistryAuth(httpx.Auth):
    def __init__(self, identity: Callable[[], Identity | None]) -> None:
        self._identity = identity
        self._token: str | None = None
        self._expires = 0.0
        self._challenge: dict[str, str] | None = None

    def _token_request(self, challenge: dict[str, str]) -> httpx.Request:
        realm = httpx.URL(challenge["realm"])
        params = list(realm.params.multi_items())
        params.append(("service", challenge.get("service", "")))
        params += [("scope", s) for s in challenge.get("scope", "").split(" ") if s]
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
        realm = httpx.URL(challenge["realm"])
        if realm.netloc != request.url.netloc:
            raise errors.Unauthorized(
                f'realm host "{realm.netloc.decode()}" does not match original host "{request.url.netloc.decode()}"'
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

    def _authorize(self, request: httpx.Request) -> None:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"

    def _flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
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
    # blob bodies must not be, so the two flows below read exactly the token responses.

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self._flow(request)
        outgoing = next(flow)
        while True:
            response = yield outgoing
            if outgoing.extensions.get(TOKEN_REQUEST):
                response.read()
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
                await response.aread()
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return


def bearer_token(http: httpx.AsyncClient) -> str | None:
    """The token the client's registry auth holds now (for requests made outside httpx)."""
    auth = http.auth
    return auth.token if isinstance(auth, RegistryAuth) else None
