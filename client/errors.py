"""The client's errors. Catch by category::

    HangarError
    ├── InvalidName                 a model name that does not parse (also a ValueError)
    ├── ModelNotFound               not in the local store
    ├── IntegrityError              bytes that do not match their digest
    ├── KeyFileError                a key file that is missing, unreadable or not ed25519
    ├── NotEnoughSpace              a transfer that would fill the store's filesystem
    └── RegistryError               anything the registry side caused
        ├── RegistryUnreachable     connection refused, DNS, timeouts (also an OSError)
        ├── TLSError                certificate problems
        ├── Unauthorized            401 after the auth flow: not signed in, unknown key
        ├── Denied                  403: signed in, but no permission
        ├── NotFound                404: no such model, tag or blob on the registry ("file does not exist")
        ├── RequestFailed           any other error status, with the registry's code and message
        ├── UnsafeRequest           the registry asked for credentials or a transfer to go where they
        │                           must not (plain http after https, a realm elsewhere, a scope not asked for)
        └── TransferFailed          retries exhausted on a blob transfer

Each message says what happened and what to do about it; the CLI prints it as is.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

from formats.errorcodes import parse_envelope

if TYPE_CHECKING:
    import httpx

# Proxies come from the environment (httpx and aiohttp both read it); this says how to fix them.
PROXY_HINT = (
    "Proxies come from HTTPS_PROXY/HTTP_PROXY (http://USER:PASSWORD@HOST:PORT when the proxy needs a"
    " password); hosts listed in NO_PROXY are reached directly"
)


class HangarError(Exception):
    pass


class InvalidName(HangarError, ValueError):
    pass


class ModelNotFound(HangarError):
    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class IntegrityError(HangarError):
    pass


class KeyFileError(HangarError):
    pass


class RegistryError(HangarError):
    pass


class RegistryUnreachable(RegistryError, OSError):
    pass


class TLSError(RegistryError):
    pass


class Unauthorized(RegistryError):
    pass


class Denied(RegistryError):
    pass


class NotFound(RegistryError):
    pass


class RequestFailed(RegistryError):
    def __init__(self, message: str, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ResponseRejected(RegistryError):
    pass


class TransferFailed(RegistryError):
    pass


class NotEnoughSpace(HangarError):
    pass


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with control and format characters (escape sequences, carriage returns, bidi
    overrides) shown as ``\\xNN`` / ``\\uNNNN`` escapes, so that text from a registry cannot
    move the cursor, retitle the terminal or forge lines. ``newlines`` keeps line feeds."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if (ch == "\n" and newlines) or ch.isprintable() or unicodedata.category(ch) == "Zs":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


class UnsafeRequest(RegistryError):
    pass


def from_response(status: int, body: bytes, what: str) -> RegistryError:
    """The error for a registry's error response; ``what`` names the operation for the message."""
    errors = parse_envelope(body)
    code, message = (errors[0][0], errors[0][1]) if errors else (None, body.decode(errors="replace").strip()[:300])
    if "\x00" in message:
        message = ""  # binary, not a message
    detail = printable(f"{code}: {message}" if code else (message or f"HTTP {status}"))[:400]
    if status == 401:
        return Unauthorized(
            f"{what}: unauthorized ({detail}); sign in with 'hangar signin' first, or with"
            " 'hangar login HOST' if the registry uses passwords or robot tokens"
        )
    if status == 403:
        return Denied(f"{what}: access denied ({detail}); you have no permission for this namespace")
    if status == 407:
        return RequestFailed(f"{what}: the HTTP proxy asked for credentials (407). {PROXY_HINT}", status, code)
    if status == 404:
        return NotFound(f"{what}: file does not exist ({detail})")  # Ollama's words, then ours
    return RequestFailed(f"{what}: registry answered {status} ({detail})", status, code)


def response_text(response: httpx.Response) -> str:
    """The message of an error answer from the runtime's API (``{"error": "…"}``), else its body."""
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text
