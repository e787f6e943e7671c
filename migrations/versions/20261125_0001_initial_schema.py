"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 22:19:01.084879
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "blob",
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_blob")),
    )
    op.create_table(
        "repository",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=161), nullable=False),
        sa.Column("name", sa.String(length=161), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repository")),
        sa.UniqueConstraint("key", name=op.f("uq_repository_key")),
    )
    op.create_table(
        "secret",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_secret")),
    )
    op.create_table(
        "manifest",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("media_type", sa.String(length=255), nullable=False),
        sa.Column("artifact_type", sa.String(length=255), nullable=True),
        sa.Column("subject_digest", sa.String(length=71), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"], ["repository.id"], name=op.f("fk_manifest_repository_id_repository"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_manifest")),
    )
    with op.batch_alter_table("manifest", schema=None) as batch_op:
        batch_op.create_index("ix_manifest_subject", ["repository_id", "subject_digest"], unique=False)
        batch_op.create_index("uq_manifest_repository_digest", ["repository_id", "digest"], unique=True)

    op.create_table(
        "repository_blob",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["digest"], ["blob.digest"], name=op.f("fk_repository_blob_digest_blob"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repository.id"],
            name=op.f("fk_repository_blob_repository_id_repository"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("repository_id", "digest", name=op.f("pk_repository_blob")),
    )
    with op.batch_alter_table("repository_blob", schema=None) as batch_op:
        batch_op.create_index("ix_repository_blob_digest", ["digest"], unique=False)

    op.create_table(
        "upload",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"], ["repository.id"], name=op.f("fk_upload_repository_id_repository"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upload")),
    )
    with op.batch_alter_table("upload", schema=None) as batch_op:
        batch_op.create_index("ix_upload_updated_at", ["updated_at"], unique=False)

    op.create_table(
        "manifest_reference",
        sa.Column("manifest_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.ForeignKeyConstraint(
            ["manifest_id"],
            ["manifest.id"],
            name=op.f("fk_manifest_reference_manifest_id_manifest"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("manifest_id", "digest", name=op.f("pk_manifest_reference")),
    )
    with op.batch_alter_table("manifest_reference", schema=None) as batch_op:
        batch_op.create_index("ix_manifest_reference_digest", ["digest"], unique=False)

    op.create_table(
        "tag",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("manifest_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["manifest_id"], ["manifest.id"], name=op.f("fk_tag_manifest_id_manifest"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["repository_id"], ["repository.id"], name=op.f("fk_tag_repository_id_repository"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("repository_id", "name", name=op.f("pk_tag")),
    )
    with op.batch_alter_table("tag", schema=None) as batch_op:
        batch_op.create_index("ix_tag_manifest_id", ["manifest_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("tag", schema=None) as batch_op:
        batch_op.drop_index("ix_tag_manifest_id")

    op.drop_table("tag")
    with op.batch_alter_table("manifest_reference", schema=None) as batch_op:
        batch_op.drop_index("ix_manifest_reference_digest")

    op.drop_table("manifest_reference")
    with op.batch_alter_table("upload", schema=None) as batch_op:
        batch_op.drop_index("ix_upload_updated_at")

    op.drop_table("upload")
    with op.batch_alter_table("repository_blob", schema=None) as batch_op:
        batch_op.drop_index("ix_repository_blob_digest")

    op.drop_table("repository_blob")
    with op.batch_alter_table("manifest", schema=None) as batch_op:
        batch_op.drop_index("uq_manifest_repository_digest")
        batch_op.drop_index("ix_manifest_subject")

    op.drop_table("manifest")
    op.drop_table("secret")
    op.drop_table("repository")
    op.drop_table("blob")
