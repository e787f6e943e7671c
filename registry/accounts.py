"""Identity in SQL: accounts (users and organisations), memberships, public keys, invites,
robots, web passwords, browser sessions, nonces and the audit log. These tables are this
module's; the repository tables are ``registry.meta``'s (a repository's visibility included).
Like ``registry.meta``, every method is synchronous and runs one short transaction
(``registry.db``); the HTTP side calls them in a thread pool, ``hangar registry admin`` calls
them directly."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from formats.auth import fingerprint
from formats.names import is_valid_namespace
from registry.db import Transactions, utcnow
from registry.models import (
    Account,
    Audit,
    Invite,
    Membership,
    Nonce,
    PendingKey,
    PublicKey,
    Robot,
    SigninLink,
    WebSession,
)

_account = cast(Table, Account.__table__)
_membership = cast(Table, Membership.__table__)
_key = cast(Table, PublicKey.__table__)
_pending = cast(Table, PendingKey.__table__)
_invite = cast(Table, Invite.__table__)
_robot = cast(Table, Robot.__table__)
_nonce = cast(Table, Nonce.__table__)
_audit = cast(Table, Audit.__table__)
_session = cast(Table, WebSession.__table__)
_link = cast(Table, SigninLink.__table__)

ROLES = ("owner", "writer", "reader")
VISIBILITIES = ("public", "private")
ROBOT_SCOPES = ("pull", "push")
_ROBOT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
APPROVAL_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
# Keys waiting for approval kept per account (the newest): anyone who knows a user name can ask.
MAX_PENDING_KEYS = 10

# Names no one may sign up with, compared case-insensitively. ``library`` is where short names
# (``llama3`` = ``library/llama3``) resolve when this registry is the client's default host: only
# an operator may create it (``hangar registry admin … --allow-library``). The rest are the web
# site's top-level pages (issue #11: ``/search``, ``/settings/keys`` …), the API's own path roots,
# and the actors the audit log writes for nobody in particular; they are never account names.
LIBRARY = "library"
RESERVED_NAMES = frozenset(
    {
        LIBRARY,
        # the web site's pages and assets
        "search", "explore", "new", "models", "settings", "keys", "robots", "orgs", "organizations",
        "signup", "signin", "signout", "login", "logout", "register", "connect", "account", "accounts",
        "admin", "static", "assets", "favicon", "docs", "help", "about", "blog", "status",
        "health", "healthz", "readyz", "metrics", "download", "downloads", "users", "user", "org", "teams", "team",
        # the API's path roots
        "api", "v1", "v2", "token", "hangar", "_catalog",
        # actors the audit log and tokens use
        "anonymous", "unknown", "robot", "root", "system",
    }
)  # fmt: skip


# Web passwords: argon2id at OWASP's recommended minimum (19 MiB, 2 passes, 1 lane) rather than
# argon2-cffi's 64 MiB default: every sign-in attempt that passes the rate limits costs one hash,
# and a burst of them must not take gigabytes. Bounds keep a request from hashing a megabyte.
PASSWORD_MIN = 10
PASSWORD_MAX = 256
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# A browser session lasts this long after sign-in, and ends sooner when unused this long.
SESSION_TTL = dt.timedelta(days=30)
SESSION_IDLE = dt.timedelta(days=7)
# ``last_seen_at`` is written at most this often per session: not one write per page view.
SESSION_TOUCH = dt.timedelta(minutes=5)
SIGNIN_LINK_TTL = 600.0


class AccountError(Exception):
    """A request the account rules refuse; the message is for the user."""


class NameTaken(AccountError):
    pass


class KeyTaken(AccountError):
    pass


class NameReserved(AccountError):
    """A name in ``RESERVED_NAMES``."""


def check_not_reserved(name: str, *, allow_library: bool = False) -> None:
    """Raise NameReserved for a reserved name (``library`` passes only with ``allow_library``)."""
    key = name.lower()
    if key in RESERVED_NAMES and not (allow_library and key == LIBRARY):
        hint = " (an administrator may create it with --allow-library)" if key == LIBRARY else ""
        raise NameReserved(f"the name {name!r} is reserved on this registry{hint}")


class NoSuchNamespace(AccountError):
    """A namespace with no account (the API answers 404)."""


class NotAnOwner(AccountError):
    """A user who may not manage a namespace (the API answers 403)."""


def check_password(password: str) -> None:
    """Raise AccountError for a password too short or too long to accept."""
    if len(password) < PASSWORD_MIN:
        raise AccountError(f"a password needs at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise AccountError(f"a password has at most {PASSWORD_MAX} characters")


def hash_password(password: str) -> str:
    check_password(password)
    return _hasher.hash(password)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when no account matches, so that a wrong name costs as long as a wrong
    password (made on first use: hashing takes tens of milliseconds, too long for every import)."""
    return _hasher.hash(secrets.token_hex(16))


def _password_matches(encoded: str | None, password: str) -> bool:
    try:
        return _hasher.verify(encoded or _dummy_hash(), password) and encoded is not None
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class AccountRecord:
    id: int
    name: str
    kind: str
    is_admin: bool
    disabled: bool
    default_visibility: str


@dataclass(frozen=True)
class KeyRecord:
    fingerprint: str
    name: str
    key: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None


@dataclass(frozen=True)
class RobotRecord:
    namespace: str
    name: str
    scope: str
    expires_at: dt.datetime

    @property
    def username(self) -> str:
        return f"{self.namespace}+{self.name}"


@dataclass(frozen=True)
class SessionRecord:
    id_hash: str
    user: AccountRecord
    created_at: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime
    user_agent: str
    remote: str


@dataclass(frozen=True)
class AuditRecord:
    at: dt.datetime
    actor: str
    action: str
    target: str
    outcome: str
    remote: str
    detail: dict[str, Any]


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _record(row: Any) -> AccountRecord:
    return AccountRecord(row.id, row.name, row.kind, bool(row.is_admin), bool(row.disabled), row.default_visibility)


def default_visibility(conn: Connection, namespace: str) -> str | None:
    """The visibility new repositories in ``namespace`` take; None when no account has that name.
    For registry.meta, which creates repositories inside its own transactions."""
    return cast(
        "str | None",
        conn.execute(select(_account.c.default_visibility).where(_account.c.key == namespace.lower())).scalar(),
    )


class Accounts(Transactions):
    # -- accounts --------------------------------------------------------------------------

    def _get(self, conn: Connection, name: str) -> AccountRecord | None:
        row = conn.execute(select(_account).where(_account.c.key == name.lower())).first()
        return _record(row) if row else None

    def get(self, name: str) -> AccountRecord | None:
        with self._read() as conn:
            return self._get(conn, name)

    def _create(
        self, conn: Connection, name: str, kind: str, admin: bool = False, *, allow_library: bool = False
    ) -> AccountRecord:
        if not is_valid_namespace(name):
            raise AccountError(
                f"invalid name {name!r}: use letters, digits, '_' and '-' (not first), at most 80 characters"
            )
        check_not_reserved(name, allow_library=allow_library)
        if self._get(conn, name) is not None:
            raise NameTaken(f"the name {name!r} is taken")
        try:
            conn.execute(
                insert(_account).values(
                    key=name.lower(), name=name, kind=kind, is_admin=admin, disabled=False,
                    default_visibility="public", created_at=utcnow(),
                )
            )  # fmt: skip
        except IntegrityError:
            raise NameTaken(f"the name {name!r} is taken") from None
        record = self._get(conn, name)
        assert record is not None
        return record

    def create_user(
        self, name: str, *, admin: bool = False, key: str | None = None, key_name: str = "", allow_library: bool = False
    ) -> AccountRecord:
        with self._write() as conn:
            user = self._create(conn, name, "user", admin, allow_library=allow_library)
            if key:
                self._add_key(conn, user.id, key, key_name or "admin-added")
            return user

    def create_org(self, name: str, owner: str | None = None, *, allow_library: bool = False) -> AccountRecord:
        with self._write() as conn:
            org = self._create(conn, name, "org", allow_library=allow_library)
            if owner:
                user = self._get(conn, owner)
                if user is None or user.kind != "user":
                    raise AccountError(f"no user named {owner!r}")
                conn.execute(insert(_membership).values(org_id=org.id, user_id=user.id, role="owner"))
            return org

    def set_disabled(self, name: str, disabled: bool) -> None:
        with self._write() as conn:
            result = conn.execute(update(_account).where(_account.c.key == name.lower()).values(disabled=disabled))
            if result.rowcount == 0:
                raise AccountError(f"no account named {name!r}")

    def manageable(self, user: AccountRecord, namespace: str) -> AccountRecord:
        """The namespace's account, if ``user`` may manage it: change its settings, robots,
        members and repositories' visibility (its own user, an owner of the organisation, or an
        administrator). Raises NoSuchNamespace or NotAnOwner. The one rule the account API and
        the web site's settings pages both apply."""
        with self._read() as conn:
            account = self._get(conn, namespace)
            if account is None:
                raise NoSuchNamespace(f"no namespace named {namespace!r}")
            if user.is_admin or account.id == user.id:
                return account
            if account.kind == "org":
                role = conn.execute(
                    select(_membership.c.role).where(
                        _membership.c.org_id == account.id, _membership.c.user_id == user.id
                    )
                ).scalar()
                if role == "owner":
                    return account
        raise NotAnOwner(f"only owners of {account.name!r} may change its settings")

    def set_default_visibility(self, namespace: str, visibility: str) -> None:
        if visibility not in VISIBILITIES:
            raise AccountError(f"visibility must be one of {', '.join(VISIBILITIES)}")
        with self._write() as conn:
            conn.execute(
                update(_account).where(_account.c.key == namespace.lower()).values(default_visibility=visibility)
            )

    # -- organisations -----------------------------------------------------------------------

    def set_member(self, org: str, user: str, role: str) -> None:
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        with self._write() as conn:
            o, u = self._get(conn, org), self._get(conn, user)
            if o is None or o.kind != "org":
                raise AccountError(f"no organisation named {org!r}")
            if u is None or u.kind != "user":
                raise AccountError(f"no user named {user!r}")
            conn.execute(delete(_membership).where(_membership.c.org_id == o.id, _membership.c.user_id == u.id))
            conn.execute(insert(_membership).values(org_id=o.id, user_id=u.id, role=role))

    def remove_member(self, org: str, user: str) -> bool:
        with self._write() as conn:
            o, u = self._get(conn, org), self._get(conn, user)
            if o is None or u is None:
                return False
            result = conn.execute(
                delete(_membership).where(_membership.c.org_id == o.id, _membership.c.user_id == u.id)
            )
            return result.rowcount > 0

    def role(self, org_id: int, user_id: int) -> str | None:
        with self._read() as conn:
            return conn.execute(
                select(_membership.c.role).where(_membership.c.org_id == org_id, _membership.c.user_id == user_id)
            ).scalar()

    def memberships(self, user_id: int) -> dict[str, str]:
        with self._read() as conn:
            rows = conn.execute(
                select(_account.c.name, _membership.c.role)
                .select_from(_membership.join(_account, _account.c.id == _membership.c.org_id))
                .where(_membership.c.user_id == user_id)
                .order_by(_account.c.key)
            )
            return {r[0]: r[1] for r in rows}

    def members(self, org: str) -> dict[str, str]:
        with self._read() as conn:
            o = self._get(conn, org)
            if o is None:
                return {}
            rows = conn.execute(
                select(_account.c.name, _membership.c.role)
                .select_from(_membership.join(_account, _account.c.id == _membership.c.user_id))
                .where(_membership.c.org_id == o.id)
                .order_by(_account.c.key)
            )
            return {r[0]: r[1] for r in rows}

    # -- keys --------------------------------------------------------------------------------

    def _add_key(self, conn: Connection, account_id: int, key: str, name: str) -> KeyRecord:
        if conn.execute(select(_key.c.id).where(_key.c.key == key)).first() is not None:
            raise KeyTaken("this key already belongs to an account")
        now = utcnow()
        fp = fingerprint(key)
        conn.execute(
            insert(_key).values(account_id=account_id, key=key, fingerprint=fp, name=name[:128], created_at=now)
        )
        return KeyRecord(fp, name[:128], key, now, None)

    def add_key(self, user: str, key: str, name: str) -> KeyRecord:
        with self._write() as conn:
            account = self._get(conn, user)
            if account is None or account.kind != "user":
                raise AccountError(f"no user named {user!r}")
            return self._add_key(conn, account.id, key, name)

    def user_for_key(self, key: str, *, touch: bool = True) -> AccountRecord | None:
        """The user a key belongs to (recording its use)."""
        with self._write() as conn:
            row = conn.execute(select(_account).select_from(_key.join(_account)).where(_key.c.key == key)).first()
            if row is None:
                return None
            if touch:
                conn.execute(update(_key).where(_key.c.key == key).values(last_used_at=utcnow()))
            return _record(row)

    def keys(self, user_id: int) -> list[KeyRecord]:
        with self._read() as conn:
            rows = conn.execute(select(_key).where(_key.c.account_id == user_id).order_by(_key.c.created_at, _key.c.id))
            return [KeyRecord(r.fingerprint, r.name, r.key, r.created_at, r.last_used_at) for r in rows]

    def remove_key(self, user_id: int, fp: str) -> bool:
        with self._write() as conn:
            result = conn.execute(delete(_key).where(_key.c.account_id == user_id, _key.c.fingerprint == fp))
            return result.rowcount > 0

    def request_approval(self, user_id: int, key: str, name: str, ttl: float = 900) -> str:
        """A short code that one of the user's signed-in devices approves with ``hangar keys approve``."""
        with self._write() as conn:
            existing = conn.execute(
                select(_pending.c.code).where(
                    _pending.c.account_id == user_id, _pending.c.key == key, _pending.c.expires_at > utcnow()
                )
            ).scalar()
            if existing:
                return str(existing)
            code = "".join(secrets.choice(APPROVAL_CODE_ALPHABET) for _ in range(8))
            code = f"{code[:4]}-{code[4:]}"
            expires = utcnow() + dt.timedelta(seconds=ttl)
            conn.execute(
                insert(_pending).values(code=code, account_id=user_id, key=key, name=name[:128], expires_at=expires)
            )
            # Anyone may ask to join a known user name: keep the newest few, drop expired ones.
            newest = (
                select(_pending.c.code)
                .where(_pending.c.account_id == user_id)
                .order_by(_pending.c.expires_at.desc(), _pending.c.code)
                .limit(MAX_PENDING_KEYS)
            )
            conn.execute(
                delete(_pending).where(
                    _pending.c.account_id == user_id, _pending.c.code.not_in(newest.scalar_subquery())
                )
            )
            conn.execute(delete(_pending).where(_pending.c.expires_at <= utcnow()))
            return code

    def approve(self, user_id: int, code: str) -> KeyRecord | None:
        """Bind the key waiting under ``code`` to the user, if the code is theirs and fresh."""
        code = code.strip().upper()
        with self._write() as conn:
            row = conn.execute(
                select(_pending).where(
                    _pending.c.code == code, _pending.c.account_id == user_id, _pending.c.expires_at > utcnow()
                )
            ).first()
            if row is None:
                return None
            conn.execute(delete(_pending).where(_pending.c.code == code))
            return self._add_key(conn, user_id, row.key, row.name)

    # -- sign-up and invites -------------------------------------------------------------------

    def create_invite(self, ttl: float = 7 * 86400) -> str:
        # Hex, not urlsafe base64: a code starting with "-" reads as an option on any command line.
        code = secrets.token_hex(12)
        with self._write() as conn:
            conn.execute(
                insert(_invite).values(
                    code_hash=_hash(code), created_at=utcnow(), expires_at=utcnow() + dt.timedelta(seconds=ttl)
                )
            )
        return code

    def signup(
        self,
        name: str,
        key: str | None,
        key_name: str,
        invite: str | None,
        require_invite: bool,
        *,
        password_hash: str | None = None,
    ) -> AccountRecord:
        """Create a user bound to ``key`` (the CLI) or with a password (the web site), consuming an
        invite when one is required (atomically)."""
        with self._write() as conn:
            invite_hash = None
            if require_invite or invite:
                if not invite:
                    raise AccountError("sign-up needs an invite code (--invite)")
                invite_hash = _hash(invite.strip())
                # Claim the code in one conditional UPDATE: of two sign-ups racing with one code,
                # the second waits on the first's row lock (PostgreSQL) or write lock (SQLite) and
                # then finds it used. A failed sign-up rolls the claim back with everything else.
                claimed = conn.execute(
                    update(_invite)
                    .where(
                        _invite.c.code_hash == invite_hash, _invite.c.used_at.is_(None), _invite.c.expires_at > utcnow()
                    )
                    .values(used_at=utcnow())
                ).rowcount
                if claimed != 1:
                    raise AccountError("the invite code is unknown, used or expired")
            if key is not None and conn.execute(select(_key.c.id).where(_key.c.key == key)).first() is not None:
                raise KeyTaken("this key already belongs to an account; use 'hangar signin' instead")
            user = self._create(conn, name, "user")
            if key is not None:
                self._add_key(conn, user.id, key, key_name)
            if password_hash is not None:
                conn.execute(update(_account).where(_account.c.id == user.id).values(password_hash=password_hash))
            if invite_hash:
                conn.execute(update(_invite).where(_invite.c.code_hash == invite_hash).values(used_by=user.id))
            return user

    # -- web passwords, sessions and sign-in links ----------------------------------------------

    def set_password(self, user_id: int, password: str) -> None:
        """Set a user's web password (argon2id; the clear text is never stored)."""
        encoded = hash_password(password)
        with self._write() as conn:
            conn.execute(update(_account).where(_account.c.id == user_id).values(password_hash=encoded))

    def has_password(self, user_id: int) -> bool:
        with self._read() as conn:
            return conn.execute(select(_account.c.password_hash).where(_account.c.id == user_id)).scalar() is not None

    def check_password(self, name: str, password: str) -> AccountRecord | None:
        """The user ``name`` if ``password`` is theirs (a disabled account included: the caller
        says why it refuses). Costs one argon2 verification whether or not the user exists."""
        if len(password) > PASSWORD_MAX:
            return None
        with self._read() as conn:
            row = conn.execute(select(_account).where(_account.c.key == name.lower())).first()
        encoded = row.password_hash if row is not None and row.kind == "user" else None
        if not _password_matches(encoded, password):
            return None
        assert row is not None
        if _hasher.check_needs_rehash(encoded or ""):
            with self._write() as conn:
                conn.execute(
                    update(_account).where(_account.c.id == row.id).values(password_hash=_hasher.hash(password))
                )
        return _record(row)

    def start_session(self, user_id: int, user_agent: str, remote: str) -> str:
        """A new browser session; returns the cookie's value (only its hash is stored)."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self._write() as conn:
            conn.execute(
                insert(_session).values(
                    id_hash=_hash(token), account_id=user_id, created_at=now, last_seen_at=now,
                    expires_at=now + SESSION_TTL, user_agent=user_agent[:255], remote=remote[:64],
                )
            )  # fmt: skip
            conn.execute(delete(_session).where(_session.c.expires_at <= now))
        return token

    def session(self, token: str) -> SessionRecord | None:
        """The live session a cookie's value names (its user enabled), noting that it was seen."""
        now = utcnow()
        id_hash = _hash(token)
        with self._read() as conn:
            row = conn.execute(
                select(_session, _account)
                .select_from(_session.join(_account, _account.c.id == _session.c.account_id))
                .where(_session.c.id_hash == id_hash)
            ).first()
        if row is None or row.expires_at <= now or row.last_seen_at + SESSION_IDLE <= now or row.disabled:
            return None
        if row.last_seen_at + SESSION_TOUCH <= now:
            with self._write() as conn:
                conn.execute(update(_session).where(_session.c.id_hash == id_hash).values(last_seen_at=now))
        return SessionRecord(
            id_hash, _record(row), row.created_at, row.last_seen_at, row.expires_at, row.user_agent, row.remote
        )

    def sessions(self, user_id: int) -> list[SessionRecord]:
        with self._read() as conn:
            user = conn.execute(select(_account).where(_account.c.id == user_id)).first()
            rows = conn.execute(
                select(_session)
                .where(_session.c.account_id == user_id, _session.c.expires_at > utcnow())
                .order_by(_session.c.last_seen_at.desc())
            ).all()
        if user is None:
            return []
        return [
            SessionRecord(r.id_hash, _record(user), r.created_at, r.last_seen_at, r.expires_at, r.user_agent, r.remote)
            for r in rows
        ]

    def end_session(self, token: str) -> bool:
        with self._write() as conn:
            return conn.execute(delete(_session).where(_session.c.id_hash == _hash(token))).rowcount > 0

    def end_sessions(self, user_id: int) -> int:
        """Sign a user out everywhere: every browser session ends."""
        with self._write() as conn:
            return conn.execute(delete(_session).where(_session.c.account_id == user_id)).rowcount

    def create_signin_link(self, user_id: int, ttl: float = SIGNIN_LINK_TTL) -> str:
        """A one-time web sign-in token for a user (printed by the CLI as a link)."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self._write() as conn:
            conn.execute(
                insert(_link).values(
                    token_hash=_hash(token), account_id=user_id, created_at=now,
                    expires_at=now + dt.timedelta(seconds=ttl),
                )
            )  # fmt: skip
            conn.execute(delete(_link).where(_link.c.expires_at <= now))
        return token

    def use_signin_link(self, token: str) -> AccountRecord | None:
        """The user a sign-in link is for, if fresh; the link is used up either way."""
        with self._write() as conn:
            row = conn.execute(select(_link).where(_link.c.token_hash == _hash(token))).first()
            if row is None:
                return None
            conn.execute(delete(_link).where(_link.c.token_hash == row.token_hash))
            if row.expires_at <= utcnow():
                return None
            account = conn.execute(select(_account).where(_account.c.id == row.account_id)).first()
        return _record(account) if account is not None else None

    # -- robots ------------------------------------------------------------------------------

    def create_robot(self, namespace: str, name: str, scope: str, ttl: float) -> tuple[RobotRecord, str]:
        if scope not in ROBOT_SCOPES:
            raise AccountError(f"scope must be one of {', '.join(ROBOT_SCOPES)}")
        if not _ROBOT_NAME_RE.fullmatch(name):
            raise AccountError("robot names are lower-case letters, digits, '_' and '-', at most 40 characters")
        token = "hgr_" + secrets.token_urlsafe(32)
        expires = utcnow() + dt.timedelta(seconds=ttl)
        with self._write() as conn:
            account = self._get(conn, namespace)
            if account is None:
                raise AccountError(f"no namespace named {namespace!r}")
            conn.execute(delete(_robot).where(_robot.c.account_id == account.id, _robot.c.name == name))
            conn.execute(
                insert(_robot).values(
                    account_id=account.id, name=name, token_hash=_hash(token), scope=scope,
                    created_at=utcnow(), expires_at=expires,
                )
            )  # fmt: skip
        return RobotRecord(account.name, name, scope, expires), token

    def robot(self, username: str, token: str) -> RobotRecord | None:
        """The robot these Basic credentials name, if the token matches, has not expired and its
        namespace's account (user or organisation) is not disabled."""
        namespace, sep, name = username.partition("+")
        if not sep:
            return None
        with self._read() as conn:
            row = conn.execute(
                select(_robot, _account.c.name.label("namespace"), _account.c.disabled.label("owner_disabled"))
                .select_from(_robot.join(_account))
                .where(_account.c.key == namespace.lower(), _robot.c.name == name)
            ).first()
        if row is None or not secrets.compare_digest(row.token_hash, _hash(token)) or row.expires_at <= utcnow():
            return None
        if row.owner_disabled:
            return None
        return RobotRecord(row.namespace, row.name, row.scope, row.expires_at)

    def robots(self, namespace: str) -> list[RobotRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(_robot, _account.c.name.label("namespace"))
                .select_from(_robot.join(_account))
                .where(_account.c.key == namespace.lower())
                .order_by(_robot.c.name)
            )
            return [RobotRecord(r.namespace, r.name, r.scope, r.expires_at) for r in rows]

    def delete_robot(self, namespace: str, name: str) -> bool:
        with self._write() as conn:
            account = self._get(conn, namespace)
            if account is None:
                return False
            result = conn.execute(delete(_robot).where(_robot.c.account_id == account.id, _robot.c.name == name))
            return result.rowcount > 0

    # -- subjects of signed URLs ---------------------------------------------------------------

    def get_by_id(self, account_id: int) -> AccountRecord | None:
        with self._read() as conn:
            row = conn.execute(select(_account).where(_account.c.id == account_id)).first()
            return _record(row) if row else None

    def robot_named(self, username: str) -> RobotRecord | None:
        """The robot ``namespace+name`` if it exists, has not expired and its account is enabled
        (no token needed: for re-checking what a robot was given earlier)."""
        namespace, sep, name = username.partition("+")
        if not sep:
            return None
        with self._read() as conn:
            row = conn.execute(
                select(_robot, _account.c.name.label("namespace"), _account.c.disabled)
                .select_from(_robot.join(_account))
                .where(_account.c.key == namespace.lower(), _robot.c.name == name)
            ).first()
        if row is None or row.disabled or row.expires_at <= utcnow():
            return None
        return RobotRecord(row.namespace, row.name, row.scope, row.expires_at)

    # -- nonces ------------------------------------------------------------------------------

    def use_nonce(self, value: str, expires_at: dt.datetime) -> bool:
        """Record a nonce; False if it was seen before (a replay)."""
        try:
            with self._write() as conn:
                if conn.execute(select(_nonce.c.value).where(_nonce.c.value == value)).first() is not None:
                    return False
                conn.execute(insert(_nonce).values(value=value, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def purge_nonces(self) -> int:
        with self._write() as conn:
            return conn.execute(delete(_nonce).where(_nonce.c.expires_at < utcnow())).rowcount

    # -- audit -------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str, outcome: str, remote: str, **detail: Any) -> None:
        with self._write() as conn:
            conn.execute(
                insert(_audit).values(
                    at=utcnow(), actor=actor[:128], action=action[:32], target=target[:255], outcome=outcome,
                    remote=remote[:64], detail=json.dumps(detail, default=str) if detail else "",
                )
            )  # fmt: skip

    def audit_log(self, limit: int = 100, action: str | None = None) -> list[AuditRecord]:
        query = select(_audit).order_by(_audit.c.id.desc()).limit(limit)
        if action:
            query = query.where(_audit.c.action == action)
        with self._read() as conn:
            return [
                AuditRecord(
                    r.at, r.actor, r.action, r.target, r.outcome, r.remote, json.loads(r.detail) if r.detail else {}
                )
                for r in conn.execute(query)
            ]
