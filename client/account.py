"""Talking to a Hangar registry's account API (``/hangar/v1/…``) with signed requests.

Each request carries ``ts`` and ``nonce`` in its query, ``Hangar-Signature-Version: 2`` and
``Authorization: <key>:<signature>`` over
``HANGAR2,<METHOD>,<registry origin><path>?<query>,<base64 of the hex sha256 of the body>`` (see
``formats.auth``): the origin binds the signature to the registry it is sent to, so that
registry cannot replay it to another."""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from client import errors
from client.config import ClientSettings
from client.http import TIMEOUT, USER_AGENT, registry_url, tls_verify
from client.keys import Identity
from client.limits import ACCEPT_ENCODING, SMALL_BODY_LIMIT, read_body_sync
from formats.auth import API_SIGNATURE_HEADER, API_SIGNATURE_VERSION, api_signing_string, go_query
from formats.names import ModelName


@dataclass
class Answer:
    status: int
    body: dict[str, Any]


def registry_base(registry: str | None, settings: ClientSettings, insecure: bool = False) -> str:
    """``scheme://host[:port]`` for a registry given as a host, a URL, or None (the default host)."""
    text = (registry or settings.default_host).rstrip("/")
    if "://" in text:
        return text
    return registry_url(ModelName(text, "x", "x", "x"), settings, insecure)


def connect_url(base: str, identity: Identity, device: str) -> str:
    """Ollama's connect URL on this registry (protocol spec §5.6): opened by someone signed in
    to the web site, it binds ``identity``'s key to their account. ``key`` is the public-key line,
    base64url without padding; ``name`` the device's host name."""
    line = identity.public_line.strip().encode()
    key = base64.urlsafe_b64encode(line).decode().rstrip("=")
    return f"{base}/connect?{urlencode({'name': device, 'key': key}, quote_via=quote)}"


class AccountClient:
    def __init__(self, base: str, identity: Identity, settings: ClientSettings) -> None:
        self.base = base
        self.identity = identity
        self.settings = settings

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None
    ) -> Answer:
        raw = json.dumps(body).encode() if body is not None else b""
        params = list((query or {}).items())
        params += [
            ("ts", str(int(time.time()))),
            ("nonce", base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")),
        ]
        path_and_query = f"{path}?{go_query(params)}"
        headers = {
            "Authorization": self.identity.authorization(api_signing_string(method, self.base, path_and_query, raw)),
            API_SIGNATURE_HEADER: API_SIGNATURE_VERSION,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": ACCEPT_ENCODING,
        }
        try:
            verify = tls_verify(self.settings, httpx.URL(self.base).netloc.decode())
            with httpx.Client(timeout=TIMEOUT, verify=verify) as http:
                request = http.build_request(method, self.base + path_and_query, content=raw, headers=headers)
                response = http.send(request, stream=True)
                read_body_sync(response, SMALL_BODY_LIMIT, f"{method} {path}")  # capped: client.limits
        except httpx.TransportError as e:
            raise errors.RegistryUnreachable(f"cannot reach {self.base}: {e}") from None
        try:
            doc = response.json()
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if response.status_code == 404 and "error" not in doc:
            raise errors.RequestFailed(
                f"{self.base} has no account API (is it a Hangar registry?)", response.status_code
            )
        return Answer(response.status_code, doc)

    def expect(self, answer: Answer, *ok: int) -> dict[str, Any]:
        if answer.status in ok:
            return answer.body
        message = str(answer.body.get("error") or f"HTTP {answer.status}")
        if answer.status == 401:
            raise errors.Unauthorized(message)
        if answer.status == 403:
            raise errors.Denied(message)
        if answer.status == 404:
            raise errors.NotFound(message)
        raise errors.RequestFailed(message, answer.status)

    # -- operations ------------------------------------------------------------------------------

    def signin(self, username: str | None, key_name: str) -> Answer:
        return self.call("POST", "/hangar/v1/signin", {"username": username or "", "key_name": key_name})

    def signup(self, username: str, invite: str | None, key_name: str) -> dict[str, Any]:
        body = {"username": username, "key_name": key_name, **({"invite": invite} if invite else {})}
        return self.expect(self.call("POST", "/hangar/v1/signup", body), 201)

    def me(self) -> dict[str, Any]:
        return self.expect(self.call("GET", "/hangar/v1/me"), 200)

    def list_keys(self) -> list[dict[str, Any]]:
        return list(self.expect(self.call("GET", "/hangar/v1/keys"), 200)["keys"])

    def remove_key(self, fingerprint: str) -> None:
        self.expect(self.call("DELETE", "/hangar/v1/keys/" + quote(fingerprint, safe="")), 200)

    def approve(self, code: str) -> dict[str, Any]:
        return self.expect(self.call("POST", "/hangar/v1/keys/approve", {"code": code}), 200)

    def signout(self) -> dict[str, Any]:
        return self.expect(self.call("POST", "/hangar/v1/signout"), 200)

    def set_password(self, password: str) -> dict[str, Any]:
        """Set the web site's password (sent once, over the signed request; never stored here)."""
        return self.expect(self.call("POST", "/hangar/v1/password", {"password": password}), 200)

    def signin_link(self) -> dict[str, Any]:
        """A one-time link that signs a browser in to this account."""
        return self.expect(self.call("POST", "/hangar/v1/signin-link"), 201)

    def create_robot(self, namespace: str, name: str, scope: str, expires_in: float) -> dict[str, Any]:
        body = {"namespace": namespace, "name": name, "scope": scope, "expires_in": expires_in}
        return self.expect(self.call("POST", "/hangar/v1/robots", body), 201)

    def robots(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.expect(self.call("GET", "/hangar/v1/robots", query={"namespace": namespace}), 200)["robots"])

    def delete_robot(self, namespace: str, name: str) -> None:
        self.expect(self.call("DELETE", f"/hangar/v1/robots/{namespace}/{name}"), 200)

    def set_visibility(self, repository: str, visibility: str) -> dict[str, Any]:
        return self.expect(self.call("PUT", f"/hangar/v1/repositories/{repository}", {"visibility": visibility}), 200)

    def set_default_visibility(self, namespace: str, visibility: str) -> dict[str, Any]:
        body = {"default_visibility": visibility}
        return self.expect(self.call("PUT", f"/hangar/v1/namespaces/{namespace}", body), 200)

    def set_member(self, org: str, user: str, role: str | None) -> dict[str, Any]:
        if role is None:
            return self.expect(self.call("DELETE", f"/hangar/v1/orgs/{org}/members/{user}"), 200)
        return self.expect(self.call("PUT", f"/hangar/v1/orgs/{org}/members/{user}", {"role": role}), 200)
