"""Self-authorising URLs: an HMAC over the path and an expiry time.

The Ollama client resolves a blob's direct URL once (the ``Location`` of a blob GET) and then
fetches ``Range`` parts from it without credentials; the signature is what authorises those
requests. The key is shared by every worker and replica through the database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


class UrlSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, path: str, expires: int) -> str:
        mac = hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, path: str, ttl: int, *, now: float | None = None) -> dict[str, str]:
        """Query parameters that make ``path`` readable without credentials for ``ttl`` seconds."""
        expires = int(now if now is not None else time.time()) + ttl
        return {"expires": str(expires), "signature": self._mac(path, expires)}

    def verify(self, path: str, expires: str, signature: str, *, now: float | None = None) -> bool:
        try:
            when = int(expires)
        except ValueError:
            return False
        if when < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(self._mac(path, when), signature)
