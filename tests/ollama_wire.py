"""A registry client that behaves as Ollama's does on the wire (§4, §6 and §7 of
shared/spec/ollama-protocol.md), written from the spec so the tests can check that a stock
Ollama client can push to and pull from our registry.

What it copies exactly: the request sequence and headers (Accept, Content-Type, Content-Range
``a-b`` without a unit, X-Redirect-Uploads), Go-style query encoding (sorted keys, ``:`` as
``%3A``), the S3-style ``etag`` of the finalize PUT, the redirect rule for the blob GET (follow
same-host redirects only, then require 307 or 200 with a Location), and part downloads sent to
the direct URL with no Authorization header.

With a key, the §5 token dance: on a 401, the challenge is parsed naively (``Bearer `` prefix,
first ``key="…"``), the realm must be on the request's host:port, the token URL is the realm plus
``service``, each ``scope``, ``ts`` and a 16-byte base64url ``nonce``, re-encoded with sorted
keys; the signing string is ``GET,<that URL>,<base64 of hex sha256 of "">``; the header is
``Authorization: <ssh public key base64>:<base64 of the raw ed25519 signature>``; the answer's
``token`` is sent as ``Bearer`` on the retried request (once) and on later registry requests.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, quote_plus, urlsplit, urlunsplit

import httpx

from formats import mediatypes as mt

USER_AGENT = "ollama/0.33.0 (amd64 linux) Go/go1.24.1"
MB = 1_000_000


class WireError(Exception):
    pass


def go_query(url: str, extra: dict[str, str]) -> str:
    """Merge ``extra`` into the URL's query and re-encode it the way Go's url.Values does."""
    parts = urlsplit(url)
    values = dict(parse_qsl(parts.query, keep_blank_values=True))
    values.update(extra)
    query = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in sorted(values.items()))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def plan_parts(total: int, min_part: int = 100 * MB, max_part: int = 1000 * MB) -> list[tuple[int, int]]:
    """``(offset, size)`` parts: total/16 clamped to [min_part, max_part]."""
    size = min(max(total // 16, min_part), max_part)
    return [(off, min(size, total - off)) for off in range(0, total, size)] or [(0, 0)]


EMPTY_BODY_HASH = "ZTNiMGM0NDI5OGZjMWMxNDlhZmJmNGM4OTk2ZmI5MjQyN2FlNDFlNDY0OWI5MzRjYTQ5NTk5MWI3ODUyYjg1NQ=="


def parse_challenge(value: str) -> dict[str, str]:
    """Ollama's parser: strip ``Bearer ``, take each key's first ``key="`` up to ``"`` + ``,``/end."""
    value = value.removeprefix("Bearer ")
    out = {}
    for key in ("realm", "service", "scope"):
        at = value.find(key + "=")
        if at < 0:
            continue
        m = re.match(r'"(.*?)"(?:,|$)', value[at + len(key) + 1 :])
        if m:
            out[key] = m.group(1)
    return out


class OllamaWireClient:
    def __init__(self, base_url: str, *, min_part: int = 100 * MB, key=None) -> None:  # type: ignore[no-untyped-def]
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).hostname
        self.min_part = min_part
        self.key = key  # a cryptography Ed25519PrivateKey, or None for anonymous
        self.token: str | None = None
        self.http = httpx.Client(headers={"User-Agent": USER_AGENT}, timeout=60, follow_redirects=False)
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, url, headers) sent
        self.redirected_parts = 0  # parts PUT straight to storage after a 307 (X-Redirect-Uploads)

    def close(self) -> None:
        self.http.close()

    def _public_key_b64(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        wire = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + raw
        return base64.b64encode(wire).decode()

    def _get_token(self, challenge_header: str, original: str) -> None:
        ch = parse_challenge(challenge_header)
        realm = urlsplit(ch["realm"])
        if realm.netloc != urlsplit(original).netloc:
            raise WireError(f'realm host "{realm.netloc}" does not match original host "{urlsplit(original).netloc}"')
        params = [("service", ch.get("service", ""))] + [("scope", s) for s in ch.get("scope", "").split(" ") if s]
        params += [
            ("ts", str(int(time.time()))),
            ("nonce", base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")),
        ]
        params += parse_qsl(realm.query, keep_blank_values=True)
        query = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in sorted(params, key=lambda kv: kv[0]))
        url = urlunsplit((realm.scheme, realm.netloc, realm.path, query, ""))
        headers = {}
        if self.key is not None:
            signature = self.key.sign(f"GET,{url},{EMPTY_BODY_HASH}".encode())
            headers["Authorization"] = f"{self._public_key_b64()}:{base64.b64encode(signature).decode()}"
        r = self.http.get(url, headers=headers)
        self.requests.append(("GET", url, dict(r.request.headers)))
        if r.status_code >= 400:
            raise WireError(f"{r.status_code}: {r.text}")
        self.token = r.json()["token"]

    def _request(self, method: str, url: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        """One request with one auth retry (§4.1)."""
        for attempt in range(2):
            headers = dict(kwargs.pop("headers", None) or {})
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            r = self.http.request(method, url, headers=headers, **kwargs)
            kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
            self.requests.append((method, url, dict(r.request.headers)))
            if r.status_code != 401 or attempt == 1:
                return r
            self._get_token(r.headers["WWW-Authenticate"], url)
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        r = self._request(method, url, **kwargs)
        if r.status_code == 401:
            raise WireError("unauthorized: access denied")
        if r.status_code == 404:
            raise WireError("file does not exist")
        if r.status_code >= 400:
            raise WireError(f"{r.status_code}: {r.text}")
        return r

    # -- push (§7) ---------------------------------------------------------------------

    def push(self, repo: str, tag: str, manifest: bytes, blobs: dict[str, bytes]) -> None:
        import json

        doc = json.loads(manifest)
        for layer in [*doc["layers"], doc["config"]]:
            digest = layer["digest"]
            head = self._request("HEAD", f"{self.base_url}/v2/{repo}/blobs/{digest}")
            if head.status_code < 400:
                continue
            self._upload(repo, digest, blobs[digest], layer.get("from"))
        self._send(
            "PUT",
            f"{self.base_url}/v2/{repo}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": mt.DOCKER_MANIFEST},
        )

    def _upload(self, repo: str, digest: str, data: bytes, parent: str | None) -> None:
        url = f"{self.base_url}/v2/{repo}/blobs/uploads/"
        if parent:
            ns, _, model = parent.partition("/")
            url = go_query(url, {"from": f"{ns}/{model.split(':')[0]}", "mount": digest})
        r = self._send("POST", url)
        if r.status_code == 201:
            return  # mounted
        location = r.headers.get("Docker-Upload-Location") or r.headers["Location"]
        if not location.startswith(("http://", "https://")):
            raise WireError(f"upload Location is not absolute: {location}")
        md5s = b""
        parts = plan_parts(len(data), self.min_part)
        for offset, size in parts:
            chunk = data[offset : offset + size]
            r = self._send(
                "PATCH",
                location,
                content=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + size - 1}",
                    "X-Redirect-Uploads": "1",
                },
            )
            if r.status_code == 307:
                # The part's bytes go to the Location (the object store) without credentials;
                # the next chunk goes to the session URL (Docker-Upload-Location).
                put = httpx.put(
                    r.headers["Location"],
                    content=chunk,
                    headers={"Content-Type": "application/octet-stream"},
                    timeout=60,
                )
                if put.status_code >= 400:
                    raise WireError(f"http status {put.status_code}: {put.text}")
                self.redirected_parts += 1
                location = r.headers["Docker-Upload-Location"]
            else:
                location = r.headers.get("Docker-Upload-Location") or r.headers["Location"]
            md5s += hashlib.md5(chunk).digest()
        etag = f"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"
        self._send(
            "PUT",
            go_query(location, {"digest": digest, "etag": etag}),
            headers={"Content-Type": "application/octet-stream", "Content-Length": "0"},
        )

    # -- pull (§6) ---------------------------------------------------------------------

    def pull(self, repo: str, tag: str, dest: Path) -> tuple[bytes, dict[str, Path]]:
        import json

        r = self._send("GET", f"{self.base_url}/v2/{repo}/manifests/{tag}", headers={"Accept": mt.DOCKER_MANIFEST})
        manifest = r.content
        doc = json.loads(manifest)
        files = {}
        for layer in [*doc["layers"], doc["config"]]:
            files[layer["digest"]] = self._download(repo, layer["digest"], dest)
        return manifest, files

    def _direct_url(self, repo: str, digest: str) -> str:
        url = f"{self.base_url}/v2/{repo}/blobs/{digest}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        for _ in range(10):
            with self.http.stream("GET", url, headers=headers) as r:  # the body is never read
                self.requests.append(("GET", url, dict(r.request.headers)))
                if r.is_redirect and urlsplit(r.headers["Location"]).hostname == self.host:
                    url = str(r.url.join(r.headers["Location"]))
                    continue
                if r.status_code not in (200, 307):
                    raise WireError(f"unexpected status code {r.status_code}")
                if "Location" not in r.headers:
                    raise WireError("http: no Location header in response")
                return str(r.url.join(r.headers["Location"]))
        raise WireError("maximum redirects exceeded (10) for directURL")

    def _download(self, repo: str, digest: str, dest: Path) -> Path:
        head = self._send("HEAD", f"{self.base_url}/v2/{repo}/blobs/{digest}")
        total = int(head.headers["Content-Length"])
        direct = self._direct_url(repo, digest)
        path = dest / ("sha256-" + digest.split(":")[1])
        partial = path.with_name(path.name + "-partial")
        with open(partial, "wb") as f:
            f.truncate(total)

        def part(offset: int, size: int) -> None:
            if size == 0:
                return
            # A plain request: no Authorization, Go's default User-Agent.
            r = httpx.get(
                direct, headers={"Range": f"bytes={offset}-{offset + size - 1}", "User-Agent": "Go-http-client/1.1"}
            )
            self.requests.append(("GET", direct, dict(r.request.headers)))
            fd = os.open(partial, os.O_WRONLY)
            try:
                os.pwrite(fd, r.content[:size], offset)
            finally:
                os.close(fd)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda p: part(*p), plan_parts(total, self.min_part)))
        actual = "sha256:" + hashlib.sha256(partial.read_bytes()).hexdigest()
        if actual != digest:
            partial.unlink()
            raise WireError(f"digest mismatch, file must be downloaded again: want {digest}, got {actual}")
        partial.rename(path)
        return path
