"""The registry's error codes (OCI distribution spec plus Docker's), registered once each with
their HTTP status and message, and the ``{"errors": [...]}`` envelope that carries them.

The registry raises :class:`DistributionError`; one exception handler writes the envelope. The client
reads the same table to turn an envelope back into a typed error."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    status: int
    message: str


_CODES = [
    ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry"),
    ErrorCode("BLOB_UPLOAD_INVALID", 400, "blob upload invalid"),
    ErrorCode("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"),
    ErrorCode("DIGEST_INVALID", 400, "provided digest did not match uploaded content"),
    ErrorCode("MANIFEST_BLOB_UNKNOWN", 400, "manifest references a blob unknown to the registry"),
    ErrorCode("MANIFEST_INVALID", 400, "manifest invalid"),
    ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown"),
    ErrorCode("NAME_INVALID", 400, "invalid repository name"),
    ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry"),
    ErrorCode("SIZE_INVALID", 400, "provided length did not match content length"),
    ErrorCode("TAG_INVALID", 400, "manifest tag did not match URI"),
    ErrorCode("RANGE_INVALID", 416, "invalid content range"),
    ErrorCode("UNAUTHORIZED", 401, "authentication required"),
    ErrorCode("DENIED", 403, "requested access to the resource is denied"),
    ErrorCode("UNSUPPORTED", 405, "the operation is unsupported"),
    ErrorCode("PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"),
    ErrorCode("TOOMANYREQUESTS", 429, "too many requests"),
    ErrorCode("UNAVAILABLE", 503, "service unavailable"),
    ErrorCode("UNKNOWN", 500, "unknown error"),
]

CODES: Mapping[str, ErrorCode] = {c.code: c for c in _CODES}


class DistributionError(Exception):
    """An error the registry reports in the distribution envelope."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        detail: Any = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        entry = CODES[code]
        self.code = code
        self.message = message or entry.message
        self.detail = detail
        self.status = status or entry.status
        self.headers = dict(headers or {})
        super().__init__(f"{code}: {self.message}")

    def envelope(self) -> dict[str, Any]:
        item: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            item["detail"] = self.detail
        return {"errors": [item]}

    def body(self) -> bytes:
        return json.dumps(self.envelope()).encode()


def parse_envelope(body: bytes) -> list[tuple[str, str, Any]]:
    """``(code, message, detail)`` for each error in an envelope; empty if it is not one."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return []
    out = []
    for e in errors:
        if isinstance(e, dict) and isinstance(e.get("code"), str):
            out.append((e["code"], str(e.get("message", "")), e.get("detail")))
    return out
