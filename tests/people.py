"""People with keys and model stores, who use a registry with authentication on."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from pathlib import Path

import httpx

from client.account import AccountClient
from client.config import ClientSettings, load
from client.credentials import record_signin
from client.keys import Identity, load_or_create
from client.pull import PullResult, pull
from client.push import PushResult, push
from client.store import Store
from formats.auth import go_query, token_signing_string
from formats.names import ModelName
from registry import db
from registry.accounts import Accounts, AuditRecord
from registry.meta import Metadata
from tests.client.conftest import make_model
from tests.servers import RegistryProcess


def database_url(registry: RegistryProcess) -> str:
    return registry.database_url or f"sqlite:///{registry.data_dir / 'registry.db'}"


def accounts_of(registry: RegistryProcess) -> Accounts:
    return Accounts(db.make_engine(database_url(registry), pooled=False))


def meta_of(registry: RegistryProcess) -> Metadata:
    return Metadata(db.make_engine(database_url(registry), pooled=False))


def audit_rows(registry: RegistryProcess, **match: str) -> list[AuditRecord]:
    rows = accounts_of(registry).audit_log(limit=10_000)
    return [r for r in rows if all(getattr(r, k) == v for k, v in match.items())]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


class Person:
    """Someone with a home directory, a key and a model store."""

    def __init__(self, registry: RegistryProcess, home: Path, name: str) -> None:
        self.registry = registry
        self.name = name
        self.settings: ClientSettings = load({"HANGAR_HOME": str(home)})
        self.identity: Identity = load_or_create(self.settings.key_path)[0]
        self.store = Store(self.settings.models).ensure()

    @property
    def account(self) -> AccountClient:
        return AccountClient(self.registry.url, self.identity, self.settings)

    def signup(self) -> Person:
        self.account.signup(self.name, None, "test device")
        self.signed_in(self.registry.url)
        return self

    def signed_in(self, registry: str) -> None:
        """Record ``registry`` as ``hangar signin`` does, so that token requests to it are signed
        (the client signs for no other registry: client.credentials)."""
        record_signin(self.settings.home, registry, self.name, self.identity.fingerprint)

    def model(self, repository: str, tag: str = "latest", size: int = 100_000) -> ModelName:
        return make_model(self.store, f"{self.registry.host}/{repository}:{tag}", os.urandom(size))

    def push(self, name: ModelName) -> PushResult:
        return asyncio.run(push(name, self.store, self.settings))

    def pull(self, name: ModelName) -> PullResult:
        return asyncio.run(pull(name, self.store, self.settings))

    def token_response(
        self, *scopes: str, ts: int | None = None, nonce: str | None = None, sign_url: str | None = None
    ) -> httpx.Response:
        """A token request exactly as Ollama makes one (ts, nonce, sorted query, signed URL)."""
        params = [("service", self.registry.host), *(("scope", s) for s in scopes)]
        params += [("ts", str(ts if ts is not None else int(time.time())))]
        params += [("nonce", nonce or base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="))]
        url = f"{self.registry.url}/token?{go_query(params)}"
        header = self.identity.authorization(token_signing_string(sign_url or url))
        return httpx.get(url, headers={"Authorization": header})

    def token(self, *scopes: str) -> str:
        r = self.token_response(*scopes)
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def http(self, *scopes: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(*scopes)}"} if scopes else {}
        return httpx.Client(base_url=self.registry.url, headers=headers, timeout=30)
