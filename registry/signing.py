"""Self-authorising URLs: an HMAC over the path, an expiry time and the subject they were issued to.

The Ollama client resolves a blob's direct URL once (the ``Location`` of a blob GET) and then
fetches ``Range`` parts from it without credentials; the signature is what authorises those
requests. The path names the repository, and the subject (``sub``: who was allowed to read it when
the URL was made) lets the registry check, each time the URL is used, that this subject still may:
a repository made private, a member removed or an account disabled closes the URL at once rather
than when it expires. The key is shared by every worker and replica through the database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


class UrlSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, path: str, expires: int, subject: str) -> str:
        mac = hmac.new(self._key, f"{path}\n{expires}\n{subject}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, path: str, ttl: int, subject: str = "", *, now: float | None = None) -> dict[str, str]:
        """Query parameters that make ``path`` readable without credentials for ``ttl`` seconds, on
        behalf of ``subject``."""
        expires = int(now if now is not None else time.time()) + ttl
        query = {"expires": str(expires), "signature": self._mac(path, expires, subject)}
        if subject:
            query["sub"] = subject
        return query

    def verify(self, path: str, expires: str, signature: str, subject: str = "", *, now: float | None = None) -> bool:
        try:
            when = int(expires)
        except ValueError:
            return False
        if when < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(self._mac(path, when, subject), signature)
