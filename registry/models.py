"""The registry's tables. Bytes live in the blob store; everything that names them lives here.

- ``repository``: one row per ``namespace/model`` (``key`` is the lower-cased name).
- ``blob`` and ``repository_blob``: a blob is visible in a repository only through a link,
  made when it is uploaded to or mounted into that repository.
- ``manifest``: the pushed bytes, byte for byte, with what the referrers API needs.
- ``manifest_reference``: the blobs and child manifests a manifest needs (for deletes and GC).
- ``tag``: a name pointing at a manifest.
- ``pull_count``: how many times each tag's manifest was fetched (the web site's pull counts).
- ``manifest_summary`` and ``model_summary``: what the web site lists and searches, kept at push
  time (``registry.meta``): a manifest's facts read from its blobs, and per repository its tags'
  count, newest update, head tag's description and capabilities, sizes and pulls.
- ``upload``: an upload session; its bytes are in the blob store under the same id.
- ``secret``: keys shared by every worker and replica (URL and token signing).

Accounts (see ``registry.accounts``):

- ``account``: a user or an organisation; its name is its namespace (one name space for both).
- ``membership``: an organisation's members and their roles (owner, writer, reader).
- ``public_key``: the ed25519 keys a user signs in with; ``pending_key``: a key waiting for
  approval from one of the user's signed-in devices.
- ``invite``: one-time sign-up codes (stored hashed).
- ``robot``: named, scoped, expiring tokens for CI and generic OCI clients (stored hashed).
- ``nonce``: signed-request nonces already seen, until their timestamp window closes.
- ``audit``: who did what, when, from where, and whether it was allowed.
- ``web_session``: a browser's signed-in session (stored hashed; see ``registry.web.sessions``);
  ``signin_link``: a one-time web sign-in link printed by the CLI (stored hashed).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from registry.db import Base, UTCDateTime, utcnow

DIGEST = String(71)  # "sha256:" + 64 hex
NAME = String(161)  # namespace (80) + "/" + model (80)


class Repository(Base):
    __tablename__ = "repository"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(NAME, unique=True)
    name: Mapped[str] = mapped_column(NAME)
    visibility: Mapped[str] = mapped_column(String(16), default="public", server_default="public")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set on the web site's model settings; when set, they stand for the model instead of what its
    # head manifest's layers say (its description layer, its README layer).
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    readme: Mapped[str | None] = mapped_column(Text, nullable=True)


class Blob(Base):
    __tablename__ = "blob"

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # The chunksums API: sha256 hex of each chunk, newline-separated, and the chunk size.
    chunk_size: Mapped[int | None] = mapped_column(BigInteger)
    chunk_sums: Mapped[str | None] = mapped_column(Text)
    # When the bytes were last published (a push of the same bytes restarts gc's grace period).
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The row's life (registry.gc): a new one when gc takes the row to delete its bytes, so that
    # a push that published before that cannot link it; ``held_until``: a push publishing the
    # bytes, or gc deleting them, has the row until then (the others wait).
    generation: Mapped[str | None] = mapped_column(String(32), default=lambda: uuid.uuid4().hex)
    held_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RepositoryBlob(Base):
    __tablename__ = "repository_blob"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blob.digest", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_repository_blob_digest", "digest"),)


class Manifest(Base):
    __tablename__ = "manifest"

    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(DIGEST)
    media_type: Mapped[str] = mapped_column(String(255))
    artifact_type: Mapped[str | None] = mapped_column(String(255))
    subject_digest: Mapped[str | None] = mapped_column(DIGEST)
    size: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("uq_manifest_repository_digest", "repository_id", "digest", unique=True),
        Index("ix_manifest_subject", "repository_id", "subject_digest"),
    )


class ManifestReference(Base):
    __tablename__ = "manifest_reference"

    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifest.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)

    __table_args__ = (Index("ix_manifest_reference_digest", "digest"),)


class Tag(Base):
    __tablename__ = "tag"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifest.id", ondelete="CASCADE"))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_tag_manifest_id", "manifest_id"),)


class PullCount(Base):
    """Manifest GETs by tag, per repository: added in batches (``registry.pulls``), never one
    write per pull."""

    __tablename__ = "pull_count"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)  # lower-cased
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ManifestSummary(Base):
    """What a manifest's config, GGUF header and text layers say, read once when it is pushed
    (``registry.web.catalog.summarize``), so that pages never read blobs to list models."""

    __tablename__ = "manifest_summary"

    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifest.id", ondelete="CASCADE"), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)  # config and layers
    architecture: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[str] = mapped_column(String(16))  # "7B"
    quantization: Mapped[str] = mapped_column(String(32))
    context_length: Mapped[int | None] = mapped_column(BigInteger)
    capabilities: Mapped[str] = mapped_column(String(128))  # comma-separated
    description: Mapped[str] = mapped_column(Text)


class ModelSummary(Base):
    """A repository as listings and search show it, rewritten in the transaction that changes its
    tags (and when its head manifest's facts arrive); only repositories with a tag have one."""

    __tablename__ = "model_summary"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(80))  # lower-cased; "library" for one-part names
    tag_count: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # the newest tag's
    head_tag: Mapped[str] = mapped_column(String(128))  # "latest", else the newest
    description: Mapped[str] = mapped_column(Text)
    capabilities: Mapped[str] = mapped_column(String(128))  # comma-separated
    sizes: Mapped[str] = mapped_column(String(255))  # the tags' parameter counts, comma-separated
    parameters: Mapped[str] = mapped_column(String(16))
    quantization: Mapped[str] = mapped_column(String(32))
    pulls: Mapped[int] = mapped_column(BigInteger, default=0)
    search_text: Mapped[str] = mapped_column(Text)  # lower-cased name and description

    __table_args__ = (
        Index("ix_model_summary_updated_at", "updated_at"),
        Index("ix_model_summary_pulls", "pulls", "updated_at"),
        Index("ix_model_summary_namespace", "namespace", "updated_at"),
    )


class Upload(Base):
    __tablename__ = "upload"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repository.id", ondelete="CASCADE"))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_upload_updated_at", "updated_at"),)


class Secret(Base):
    __tablename__ = "secret"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Account(Base):
    __tablename__ = "account"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(80), unique=True)  # lower-cased name
    name: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(8))  # "user" | "org"
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    default_visibility: Mapped[str] = mapped_column(String(16), default="public")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    password_hash: Mapped[str | None] = mapped_column(String(255))  # argon2id; None: no web password


class Membership(Base):
    __tablename__ = "membership"

    org_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))  # "owner" | "writer" | "reader"

    __table_args__ = (Index("ix_membership_user_id", "user_id"),)


class PublicKey(Base):
    __tablename__ = "public_key"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(128), unique=True)  # base64 of the SSH wire encoding
    fingerprint: Mapped[str] = mapped_column(String(64))  # "SHA256:..."
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_public_key_account_id", "account_id"),)


class PendingKey(Base):
    __tablename__ = "pending_key"

    code: Mapped[str] = mapped_column(String(16), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Invite(Base):
    __tablename__ = "invite"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    used_by: Mapped[int | None] = mapped_column(ForeignKey("account.id", ondelete="SET NULL"))
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Robot(Base):
    __tablename__ = "robot"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(40))
    token_hash: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(8))  # "pull" | "push"
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("uq_robot_account_name", "account_id", "name", unique=True),)


class Nonce(Base):
    __tablename__ = "nonce"

    value: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_nonce_expires_at", "expires_at"),)


class Audit(Base):
    __tablename__ = "audit"

    # SQLite auto-increments only INTEGER PRIMARY KEY columns.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))  # user name, "robot:ns+name", or "anonymous"
    action: Mapped[str] = mapped_column(String(32))  # push, delete, signin, signup, key.add, auth …
    target: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16))  # "ok" | "denied"
    remote: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_audit_at", "at"),)


class WebSession(Base):
    __tablename__ = "web_session"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the cookie's value
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    user_agent: Mapped[str] = mapped_column(String(255))
    remote: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_web_session_account_id", "account_id"),
        Index("ix_web_session_expires_at", "expires_at"),
    )


class SigninLink(Base):
    __tablename__ = "signin_link"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
