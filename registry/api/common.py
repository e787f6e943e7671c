"""What every handler needs: the app's services, validated path parameters, absolute URLs,
pagination and the body-length rules."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request

from registry.config import Settings
from registry.meta import Metadata
from registry.oci.digest import Digest, InvalidDigest
from registry.oci.errors import RegistryError
from registry.oci.names import InvalidName, is_valid_tag, parse_repository
from registry.signing import UrlSigner
from registry.storage import BlobStore

MAX_PAGE = 1000
API_VERSION_HEADER = ("Docker-Distribution-Api-Version", "registry/2.0")


@dataclass
class Services:
    settings: Settings
    meta: Metadata
    store: BlobStore
    signer: UrlSigner


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def repository(request: Request) -> str:
    """The ``namespace/model`` path parameter, validated."""
    name: str = request.path_params["name"]
    try:
        parse_repository(name)
    except InvalidName as e:
        raise RegistryError("NAME_INVALID", str(e), detail={"name": name}) from None
    return name


def digest_param(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InvalidDigest as e:
        raise RegistryError("DIGEST_INVALID", str(e), detail={"digest": text}) from None


def reference_param(text: str) -> Digest | str:
    """A manifest reference: a digest, or a tag."""
    if ":" in text:
        return digest_param(text)
    if not is_valid_tag(text):
        raise RegistryError("TAG_INVALID", f"invalid tag {text!r}", detail={"tag": text})
    return text


def external_url(request: Request, path: str, query: dict[str, str] | None = None) -> str:
    """An absolute URL on this registry, as the client reached it (or --public-url)."""
    base = services(request).settings.public_url or f"{request.url.scheme}://{request.url.netloc}"
    return base + path + ("?" + urlencode(query) if query else "")


def page_params(request: Request) -> tuple[int, str | None]:
    raw_n = request.query_params.get("n")
    last = request.query_params.get("last") or None
    if raw_n is None or raw_n == "":
        return MAX_PAGE, last
    try:
        n = int(raw_n)
    except ValueError:
        n = -1
    if n < 0:
        raise RegistryError("PAGINATION_NUMBER_INVALID", f"n must be a non-negative integer, got {raw_n!r}")
    return min(n, MAX_PAGE), last


def next_link(path: str, n: int, last: str) -> str:
    return f'<{path}?{urlencode({"n": n, "last": last})}>; rel="next"'


def content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise RegistryError("SIZE_INVALID", f"invalid Content-Length {raw!r}")
    return int(raw)


def has_body(request: Request) -> bool:
    length = content_length(request)
    if length is not None:
        return length > 0
    return "chunked" in request.headers.get("transfer-encoding", "").lower()
