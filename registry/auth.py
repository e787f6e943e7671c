"""Who may do what, and the tokens that say so.

Principals are anonymous, users (signed in with an ed25519 key) or robots (a namespace's scoped
token, presented with HTTP Basic at the token endpoint). What a principal may do to a repository:

==================================  =======================
(the namespace is a repository name's first component; ``library`` for a one-part name)
public repository                   anyone: pull
user's own namespace                that user: everything
organisation namespace              owner, writer: everything; reader: pull
robot of a namespace                pull (scope ``pull``) or everything (scope ``push``)
administrator                       everything
==================================  =======================

Tokens are HS256 JWTs signed with a key kept in the database (shared by every worker and
replica), short-lived, and carry the granted scopes; every request checks one. A token's ``aud``
is this registry's canonical service (``host[:port]`` of its canonical origin,
``registry.origins``), whatever ``service`` the token request named: a token is only ever good
here, and ``verify`` refuses one whose audience is not one of this registry's names (registries
that share a signing key do not accept each other's tokens). ``verify`` also reads the account
behind the token, so disabling an account (or deleting a robot) stops its tokens at once, not
when they expire.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from formats.auth import ACTIONS, Scope
from formats.names import repository_key, repository_namespace
from registry.accounts import Accounts
from registry.db import utcnow
from registry.meta import Metadata

ALL = frozenset(ACTIONS)


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    kind: str  # "anonymous" | "user" | "robot"
    name: str
    account_id: int | None = None
    is_admin: bool = False
    robot_namespace: str | None = None
    robot_scope: str | None = None

    @property
    def actor(self) -> str:
        return f"robot:{self.name}" if self.kind == "robot" else self.name


ANONYMOUS = Principal("anonymous", "anonymous")


@dataclass(frozen=True)
class Grant:
    principal: Principal
    access: dict[str, frozenset[str]]  # repository key -> actions

    def allows(self, repository: str, action: str) -> bool:
        return action in self.access.get(repository_key(repository), frozenset())


class Authority:
    def __init__(self, accounts: Accounts, meta: Metadata, signing_key: bytes, token_ttl: int = 300) -> None:
        self.accounts = accounts
        self.meta = meta  # a repository's visibility is the repository's (registry.meta)
        self._key = signing_key
        self.token_ttl = token_ttl
        # Names a pull-through mirror serves (registry.mirror): pulled by anyone, as a public
        # repository is, before they exist here.
        self.mirrored: Callable[[str], bool] = lambda name: False

    def allowed(self, principal: Principal, repository: str) -> frozenset[str]:
        """Every action ``principal`` may take on ``repository`` (reads the database)."""
        namespace = repository_namespace(repository)  # a one-part name is library's
        actions: set[str] = set()
        visibility = self.meta.repository_visibility(repository)
        if visibility == "public" or (visibility is None and self.mirrored(repository)):
            actions.add("pull")
        if principal.is_admin:
            return ALL
        if principal.kind == "user" and principal.account_id is not None:
            owner = self.accounts.get(namespace)
            if owner is not None and not owner.disabled:
                if owner.id == principal.account_id:
                    return ALL
                if owner.kind == "org":
                    role = self.accounts.role(owner.id, principal.account_id)
                    if role in ("owner", "writer"):
                        return ALL
                    if role == "reader":
                        actions.add("pull")
        if principal.kind == "robot" and (principal.robot_namespace or "").lower() == namespace:
            actions.add("pull")
            if principal.robot_scope == "push":
                actions |= {"push", "delete"}
        return frozenset(actions)

    def grant(self, principal: Principal, requested: list[Scope], *, whole_role: bool = False) -> list[Scope]:
        """The requested scopes cut down to what the principal may do (empty ones dropped).

        With ``whole_role`` each requested repository gets every action the principal may take
        on it, whatever actions were asked for. The token endpoint does that for HTTP Basic
        holders (robots): generic OCI clients such as oras-py ask for a token with the first
        challenge's scope (``pull``, from a blob HEAD) and then send that one token for the whole
        operation, never asking again after a 401 (only after a 403, which the Ollama client
        takes as final). It grants nothing the robot's password does not already give."""
        out = []
        for scope in requested:
            if scope.type != "repository":
                continue
            allowed = self.allowed(principal, scope.name)
            actions = allowed if whole_role else scope.actions & allowed
            if actions:
                out.append(Scope(scope.name, frozenset(actions)))
        return out

    def mint(self, principal: Principal, scopes: list[Scope], service: str) -> tuple[str, int, dt.datetime]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "hangar",
            "sub": principal.name,
            "aud": service,
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.token_ttl,
            "jti": secrets.token_urlsafe(12),
            "kind": principal.kind,
            "aid": principal.account_id,
            "adm": principal.is_admin,
            "access": [{"type": s.type, "name": s.name, "actions": sorted(s.actions)} for s in scopes],
        }
        if principal.kind == "robot":
            claims["rns"], claims["rsc"] = principal.robot_namespace, principal.robot_scope
        token = jwt.encode(claims, self._key, algorithm="HS256")
        return token, self.token_ttl, dt.datetime.fromtimestamp(now, dt.UTC)

    def verify(self, token: str, audience: Sequence[str]) -> Grant:
        """The grant of a token minted here for one of ``audience`` (this registry's services),
        unexpired, whose account is still in good standing (reads the database)."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=list(audience),
                options={"require": ["exp", "iat", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as e:
            raise InvalidToken(f"the token is invalid: {e} (it was not issued for this registry)") from None
        except jwt.PyJWTError as e:
            raise InvalidToken(f"the token is invalid: {e}") from None
        principal = Principal(
            kind=str(claims.get("kind", "anonymous")),
            name=str(claims["sub"]),
            account_id=claims.get("aid"),
            is_admin=bool(claims.get("adm")),
            robot_namespace=claims.get("rns"),
            robot_scope=claims.get("rsc"),
        )
        access: dict[str, frozenset[str]] = {}
        for item in claims.get("access", []):
            if isinstance(item, dict) and item.get("type") == "repository":
                key = repository_key(str(item.get("name", "")))
                access[key] = access.get(key, frozenset()) | frozenset(map(str, item.get("actions", [])))
        if reason := self.revoked(principal):
            raise InvalidToken(reason)
        return Grant(principal, access)

    def revoked(self, principal: Principal) -> str | None:
        """Why a token issued to ``principal`` no longer holds (None: it does): its user is gone,
        disabled or no longer what the token says; its robot is deleted or expired, or the robot's
        namespace disabled."""
        if principal.kind == "user":
            user = self.accounts.get(principal.name)
            if user is None or user.id != principal.account_id:
                return f"the account {principal.name!r} no longer exists"
            if user.disabled:
                return f"the account {user.name!r} is disabled"
            if principal.is_admin and not user.is_admin:
                return f"the account {user.name!r} is no longer an administrator"
        elif principal.kind == "robot":
            namespace, _, name = principal.name.partition("+")
            owner = self.accounts.get(namespace)
            if owner is None or owner.disabled:
                return f"the account {namespace!r} that owns robot {principal.name!r} is disabled"
            now = utcnow()
            if not any(r.name == name and r.expires_at > now for r in self.accounts.robots(namespace)):
                return f"the robot {principal.name!r} was deleted or has expired"
        return None
