"""HTTP plumbing for talking to registries: where a name's registry is, the httpx client, and
one function that sends a request and turns failures into the errors of ``client.errors``."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from client import errors, keys
from client.auth import RegistryAuth
from client.config import ClientSettings
from client.credentials import origin_text, registry_host, signs_for
from client.keys import Identity
from client.limits import (
    ACCEPT_ENCODING,
    ERROR_BODY_LIMIT,
    MANIFEST_LIMIT,
    SMALL_BODY_LIMIT,
    read_body,
    request_deadline,
)
from client.logins import Login, find
from formats import mediatypes as mt
from formats.manifest import Manifest, ManifestError
from formats.names import ModelName

if TYPE_CHECKING:
    import aiohttp

USER_AGENT = "hangar/0.1.0"
TIMEOUT = httpx.Timeout(connect=15.0, read=30.0, write=60.0, pool=None)
MANIFEST_ACCEPT = ", ".join([mt.DOCKER_MANIFEST, mt.OCI_MANIFEST])  # what a model's manifest may be


def registry_url(name: ModelName, settings: ClientSettings, insecure: bool = False) -> str:
    """``scheme://host`` of the registry holding ``name``: https unless told otherwise."""
    configured = settings.registry(name.host).insecure
    plain = insecure or name.scheme == "http" or (is_loopback(name.host) if configured is None else configured)
    return f"{'http' if plain else 'https'}://{name.host}"


def is_loopback(host: str) -> bool:
    """Registries on this machine speak plain http unless configured otherwise (as Docker does)."""
    bare = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return bare in ("localhost", "[::1]") or bare.startswith("127.")


def make_client(
    settings: ClientSettings,
    base: str,
    *,
    scopes: Sequence[str],
    connections: int = 8,
    login: Login | None = None,
) -> httpx.AsyncClient:
    """A client for the registry at ``base`` (``scheme://host[:port]``) that will do ``scopes``
    there (client.credentials: ``pull_scope``, ``push_scopes``), with the username and password
    stored for it (client.logins; ``login`` instead, for ``hangar login`` to check new ones), or
    signing token requests with this machine's key if it has one and the user signed in to that
    registry."""
    logins = (lambda: login) if login is not None else _login_loader(settings, base)
    return httpx.AsyncClient(
        auth=RegistryAuth(base, _identity_loader(settings, base), scopes, logins),
        # Only the encodings client.limits can unpack a bounded slice at a time.
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
        timeout=TIMEOUT,
        verify=tls_verify(settings, httpx.URL(base).netloc.decode()),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        follow_redirects=False,
    )


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    stream: bool = False,
    allow: tuple[int, ...] = (),
    limit: int = SMALL_BODY_LIMIT,
    **kwargs: Any,
) -> httpx.Response:
    """Send a request; raise a ``client.errors`` error for transport failures and error statuses
    (except those in ``allow``, which are returned).

    The body is read through ``client.limits.read_body``: at most ``limit`` bytes unpacked (error
    bodies 64 KiB), and the whole exchange within the request deadline (for uploads, whose
    request body may take long, the answer's body only). With ``stream=True`` the body is not
    read and the caller must close the response."""
    uploading = "content" in kwargs and not isinstance(kwargs["content"], (bytes, str))
    deadline = None if uploading else request_deadline()
    try:
        async with asyncio.timeout(deadline):
            response = await _send_once_more_if_dropped(http, method, url, uploading, kwargs)
    except TimeoutError:
        raise errors.RegistryUnreachable(f"{what}: {origin_text(url)} did not answer within {deadline:.0f} s") from None
    except httpx.ConnectError as e:
        if isinstance(e.__cause__, ssl.SSLError) or "SSL" in str(e) or "CERTIFICATE" in str(e).upper():
            raise errors.TLSError(
                f"{what}: TLS failed for {url}: {e}. For a registry with a private CA set ca_bundle in "
                "~/.hangar/config.toml; for plain http use --insecure"
            ) from None
        reason = str(e) or type(e).__name__
        raise errors.RegistryUnreachable(f"{what}: cannot reach {origin_text(url)}: {reason}") from None
    except httpx.ProxyError as e:
        where = origin_text(url)
        raise errors.RegistryUnreachable(
            f"{what}: the HTTP proxy refused to reach {where}: {e}. {errors.PROXY_HINT}"
        ) from None
    except httpx.TimeoutException as e:
        raise errors.RegistryUnreachable(f"{what}: {origin_text(url)} timed out ({type(e).__name__})") from None
    except httpx.TransportError as e:
        raise errors.RegistryUnreachable(
            f"{what}: connection to {origin_text(url)} failed: {str(e) or type(e).__name__}"
        ) from None
    if response.status_code >= 400 and response.status_code not in allow:
        body = await read_body(response, ERROR_BODY_LIMIT, what, truncate=True)
        raise errors.from_response(response.status_code, body, what)
    if not stream:
        if response.status_code >= 400:  # an allowed error: its body is a message at most
            await read_body(response, ERROR_BODY_LIMIT, what, truncate=True)
        else:
            await read_body(response, limit, what)
    return response


async def get_model_manifest(http: httpx.AsyncClient, base: str, name: ModelName, what: str) -> Manifest:
    """``name``'s manifest from the registry at ``base``, checked: it parses, it is a single model
    (not an index), and its bytes are the digest the registry names (``Docker-Content-Digest``)."""
    response = await send(
        http, "GET", f"{base}/v2/{name.repository}/manifests/{name.tag}",
        headers={"Accept": MANIFEST_ACCEPT}, what=what, limit=MANIFEST_LIMIT,
    )  # fmt: skip
    try:
        manifest = Manifest.parse(response.content, response.headers.get("content-type"))
    except ManifestError as e:
        raise errors.IntegrityError(f"{what}: the registry sent an invalid manifest: {e}") from None
    if manifest.is_index:
        raise errors.RequestFailed(f"{name.display()} is a multi-platform index; Hangar pulls single models", 415)
    docker_digest = response.headers.get("docker-content-digest")
    if docker_digest and docker_digest != str(manifest.digest):
        raise errors.IntegrityError(
            f"manifest digest mismatch: the registry says {docker_digest}, the bytes are {manifest.digest}"
        )
    return manifest


async def _send_once_more_if_dropped(
    http: httpx.AsyncClient, method: str, url: str, uploading: bool, kwargs: dict[str, Any]
) -> httpx.Response:
    """Send; when a kept-alive connection turns out closed before any answer came back, send once
    more on a new one. Some proxies (tinyproxy among them) and load balancers close a connection
    after each response without saying so, and httpx may reuse it in the instant before the close
    arrives; curl and Go's client retry the same way. A streamed body cannot be replayed: its
    caller's own retry (an upload part's) handles that case."""
    auth = kwargs.get("auth", httpx.USE_CLIENT_DEFAULT)
    options = {k: v for k, v in kwargs.items() if k != "auth"}
    try:
        return await http.send(http.build_request(method, url, **options), stream=True, auth=auth)
    except httpx.RemoteProtocolError as e:
        if uploading or "without sending a response" not in str(e):
            raise
    return await http.send(http.build_request(method, url, **options), stream=True, auth=auth)


def make_data_session(settings: ClientSettings, host: str, connections: int) -> aiohttp.ClientSession:
    """The session that carries blob bytes (aiohttp: a C parser, several times httpx's speed).
    Imported here: only pulls need it, and importing it costs a sixth of a second."""
    import aiohttp

    verify = tls_verify(settings, host)
    connector = aiohttp.TCPConnector(limit=connections + 2, ssl=verify if isinstance(verify, ssl.SSLContext) else True)
    # trust_env: HTTPS_PROXY/HTTP_PROXY/NO_PROXY (and credentials in them) as httpx honours them,
    # so blob bytes take the same way as the requests around them, redirects to object stores too.
    return aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": USER_AGENT}, auto_decompress=False, trust_env=True
    )


def tls_verify(settings: ClientSettings, host: str) -> Any:
    """What httpx should verify TLS with: the registry's own CA bundle if configured."""
    ca_bundle = settings.registry(host).ca_bundle
    return ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True


def _identity_loader(settings: ClientSettings, base: str) -> Callable[[], Identity | None]:
    """Load the key when a registry first asks for a token; no key, or a registry the key does
    not sign for (client.credentials.signs_for), means anonymous tokens."""
    loaded: list[Identity | None] = []

    def identity() -> Identity | None:
        if not loaded:
            path = settings.key_path
            loaded.append(keys.load(path) if path.exists() and signs_for(settings, base) else None)
        return loaded[0]

    return identity


def _login_loader(settings: ClientSettings, base: str) -> Callable[[], Login | None]:
    """The stored credentials for the registry, looked up when it first asks for some (a
    credential helper may be slow, or prompt)."""
    return lambda: find(settings.home, registry_host(base))


async def check_login(settings: ClientSettings, base: str, username: str, password: str) -> None:
    """Ask the registry at ``base`` whether it accepts ``username`` and ``password`` (``GET /v2/``
    through the auth flow: Basic, or a token from its realm), as ``docker login`` does; raise
    ``Unauthorized`` naming the registry if not."""
    login = Login(username, password, "this login")
    async with make_client(settings, base, scopes=[], login=login) as http:
        await send(http, "GET", f"{base}/v2/", what=f"log in to {registry_host(base)}")
