"""The mirror's HTTP client for one upstream registry (httpx): manifests and blobs, with the
upstream's authentication done on a 401 as its challenge asks.

- ``Bearer realm=…`` (distribution's token flow and Ollama's): a token from the realm for the
  request's scope, asked anonymously, with HTTP Basic (``username``/``password``), or signed
  with the mirror's ed25519 key exactly as Ollama signs (``formats.auth``: ``GET,<URL>,<hash>``,
  the query holding ``ts`` and ``nonce``, Go-encoded). Tokens are kept per scope until they expire.
- ``Basic``: the username and password on every request.
- a static ``token``: sent as ``Bearer`` from the first request.

Secrets never reach a log line or an exception message: errors name the upstream and the status.
Blob GETs follow redirects (ollama.com answers 307 to its CDN); httpx drops ``Authorization`` on a
redirect to another host, so the CDN never sees the mirror's token.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from formats import mediatypes as mt
from formats.auth import authorization, encode_public_key, go_query, parse_challenge, token_signing_string
from registry.mirror.config import Credentials, Upstream

# What the mirror accepts for a manifest: everything a registry may store (it is kept and served
# byte for byte, so it must not ask for a conversion).
MANIFEST_ACCEPT = ", ".join([mt.DOCKER_MANIFEST, mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST])
USER_AGENT = "hangar-mirror/1"


class UpstreamError(Exception):
    """The upstream answered something other than what was asked for (a 404 is ``UpstreamNotFound``)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamNotFound(UpstreamError):
    pass


class UpstreamUnreachable(UpstreamError):
    """No answer at all: refused, reset, timed out, a TLS failure."""


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    digest: str
    media_type: str
    content: bytes


class _Ed25519Signer:
    """The mirror's own key, read once (an OpenSSH ``id_ed25519`` as ``hangar signin`` writes)."""

    def __init__(self, path: str) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        data = Path(path).read_bytes()
        key: object
        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except ValueError:
            key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an ed25519 private key")
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_b64 = encode_public_key(raw)

    def header(self, url: str) -> str:
        return authorization(self.public_b64, self._key.sign(token_signing_string(url)))


class UpstreamClient:
    """One upstream's connection pool and token cache (one per worker process)."""

    def __init__(self, upstream: Upstream, timeout: float = 30.0) -> None:
        self.upstream = upstream
        self.credentials: Credentials = upstream.credentials
        self._signer = _Ed25519Signer(self.credentials.key_path) if self.credentials.key_path else None
        # Connect and read timeouts, not a total: a 5 GB blob takes as long as it takes.
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expires at)

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- authentication -------------------------------------------------------------------------

    def _auth_header(self, scope: str) -> dict[str, str]:
        cached = self._tokens.get(scope)
        if cached and cached[1] > time.monotonic():
            return {"Authorization": f"Bearer {cached[0]}"}
        if self.credentials.token:
            return {"Authorization": f"Bearer {self.credentials.token}"}
        return {}

    def _basic(self) -> str:
        pair = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    async def _authenticate(self, challenge: str, scope: str) -> dict[str, str]:
        """Headers that answer ``challenge`` (a 401's ``WWW-Authenticate``); UpstreamError if
        the mirror has nothing that could."""
        if challenge.lower().startswith("basic"):
            if not self.credentials.username:
                raise UpstreamError(f"{self.upstream.url} wants a password and the mirror has none for it", 401)
            return {"Authorization": self._basic()}
        fields = parse_challenge(challenge)
        if fields is None:
            raise UpstreamError(f"{self.upstream.url} sent a challenge the mirror does not understand", 401)
        realm = urlsplit(fields["realm"])
        params = list(_query_pairs(realm.query))
        params.append(("service", fields.get("service", "")))
        params += [("scope", s) for s in (fields.get("scope") or scope).split(" ") if s]
        headers: dict[str, str] = {}
        if self._signer is not None:
            # Ollama's signed token request: the signature covers the whole URL, ts and nonce included.
            params += [
                ("ts", str(int(time.time()))),
                ("nonce", base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")),
            ]
            url = urlunsplit((realm.scheme, realm.netloc, realm.path, go_query(params), ""))
            headers["Authorization"] = self._signer.header(url)
        else:
            url = urlunsplit((realm.scheme, realm.netloc, realm.path, go_query(params), ""))
            if self.credentials.username:
                headers["Authorization"] = self._basic()
        try:
            response = await self.http.get(url, headers=headers)
        except httpx.TransportError as e:
            raise UpstreamUnreachable(f"{self.upstream.url}'s token service: {type(e).__name__}") from None
        if response.status_code != 200:
            raise UpstreamError(f"{self.upstream.url}'s token service refused the mirror ({response.status_code})", 401)
        try:
            body = response.json()
            token = str(body.get("token") or body["access_token"])
            ttl = float(body.get("expires_in") or 60)
        except (ValueError, KeyError, TypeError):
            raise UpstreamError(f"{self.upstream.url}'s token service sent no token", 401) from None
        self._tokens[scope] = (token, time.monotonic() + max(ttl - 10, 5))
        return {"Authorization": f"Bearer {token}"}

    @asynccontextmanager
    async def _request(
        self, method: str, path: str, repository: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """A streamed response to ``method path``, authenticated (one retry after a 401)."""
        scope = f"repository:{repository}:pull"
        url = self.upstream.url + path
        extra = dict(headers or {})
        for attempt in range(2):
            try:
                request = self.http.build_request(method, url, headers={**extra, **self._auth_header(scope)})
                response = await self.http.send(request, stream=True)
            except httpx.TransportError as e:
                raise UpstreamUnreachable(f"{self.upstream.url} did not answer: {type(e).__name__}") from None
            if response.status_code == 401 and attempt == 0:
                challenge = response.headers.get("www-authenticate", "")
                await response.aclose()
                self._tokens.pop(scope, None)
                extra.update(await self._authenticate(challenge, scope))
                continue
            try:
                yield response
            finally:
                await response.aclose()
            return

    # -- the registry API -------------------------------------------------------------------------

    async def manifest_digest(self, repository: str, reference: str) -> str:
        """What ``reference`` points at now (a HEAD; a GET where the answer has no digest)."""
        path = f"/v2/{repository}/manifests/{reference}"
        async with self._request("HEAD", path, repository, {"Accept": MANIFEST_ACCEPT}) as r:
            _check(r, self.upstream.url, path)
            digest = r.headers.get("docker-content-digest")
        if digest:
            return str(digest)
        return (await self.manifest(repository, reference)).digest

    async def manifest(self, repository: str, reference: str) -> UpstreamManifest:
        from formats.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError

        path = f"/v2/{repository}/manifests/{reference}"
        async with self._request("GET", path, repository, {"Accept": MANIFEST_ACCEPT}) as r:
            _check(r, self.upstream.url, path)
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise UpstreamError(f"{self.upstream.url}: manifest {repository}:{reference} is too large")
            content_type = r.headers.get("content-type", "").split(";", 1)[0].strip() or None
        try:
            parsed = Manifest.parse(bytes(body), content_type)
        except ManifestError as e:
            raise UpstreamError(f"{self.upstream.url}: manifest {repository}:{reference} is invalid: {e}") from None
        if reference.startswith("sha256:") and str(parsed.digest) != reference:
            raise UpstreamError(f"{self.upstream.url}: manifest {reference} has digest {parsed.digest}")
        return UpstreamManifest(str(parsed.digest), parsed.media_type, bytes(body))

    async def has_blob(self, repository: str, digest: str) -> None:
        """A HEAD: returns when the upstream has the blob in ``repository``; UpstreamNotFound else."""
        path = f"/v2/{repository}/blobs/{digest}"
        async with self._request("HEAD", path, repository) as r:
            _check(r, self.upstream.url, path)

    @asynccontextmanager
    async def blob(self, repository: str, digest: str, offset: int = 0) -> AsyncIterator[httpx.Response]:
        """The blob's bytes from ``offset`` (a 206, checked), as a streamed response."""
        path = f"/v2/{repository}/blobs/{digest}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with self._request("GET", path, repository, headers) as r:
            _check(r, self.upstream.url, path)
            if offset and r.status_code != 206:
                raise UpstreamError(f"{self.upstream.url} ignored the range of a resumed fetch ({r.status_code})")
            if offset and not r.headers.get("content-range", "").startswith(f"bytes {offset}-"):
                raise UpstreamError(f"{self.upstream.url} answered another range than bytes={offset}-")
            yield r


def _check(response: httpx.Response, base: str, path: str) -> None:
    if response.status_code in (200, 206):
        return
    if response.status_code == 404:
        raise UpstreamNotFound(f"{base}{path}: not found", 404)
    if response.status_code >= 500:
        raise UpstreamUnreachable(f"{base}{path}: the upstream answered {response.status_code}", response.status_code)
    raise UpstreamError(f"{base}{path}: the upstream answered {response.status_code}", response.status_code)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query, keep_blank_values=True)
