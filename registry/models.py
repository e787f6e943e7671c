"""The registry's tables. Bytes live in the blob store; everything that names them lives here.

- ``repository``: one row per ``namespace/model`` (``key`` is the lower-cased name).
- ``blob`` and ``repository_blob``: a blob is visible in a repository only through a link,
  made when it is uploaded to or mounted into that repository.
- ``manifest``: the pushed bytes, byte for byte, with what the referrers API needs.
- ``manifest_reference``: the blobs and child manifests a manifest needs (for deletes and GC).
- ``tag``: a name pointing at a manifest.
- ``upload``: an upload session; its bytes are in the blob store under the same id.
- ``secret``: keys shared by every worker and replica (URL signing).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from registry.db import Base, UTCDateTime, utcnow

DIGEST = String(71)  # "sha256:" + 64 hex
NAME = String(161)  # namespace (80) + "/" + model (80)


class Repository(Base):
    __tablename__ = "repository"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(NAME, unique=True)
    name: Mapped[str] = mapped_column(NAME)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Blob(Base):
    __tablename__ = "blob"

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


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
