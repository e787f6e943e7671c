"""model summaries: what the web site lists and searches, kept at push time

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 09:20:00.000000

``manifest_summary`` holds what a manifest's blobs say (read by the registry when it is pushed);
``model_summary`` one row per repository with a tag. The upgrade fills ``model_summary`` for the
repositories already there from what SQL knows (tags, their times, pulls); the facts that only the
blobs know (description, capabilities, sizes) are read by the registry at its next start
(``registry.web.catalog.backfill``), which rewrites these rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "manifest_summary",
        sa.Column("manifest_id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("architecture", sa.String(length=64), nullable=False),
        sa.Column("parameters", sa.String(length=16), nullable=False),
        sa.Column("quantization", sa.String(length=32), nullable=False),
        sa.Column("context_length", sa.BigInteger(), nullable=True),
        sa.Column("capabilities", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["manifest_id"],
            ["manifest.id"],
            name=op.f("fk_manifest_summary_manifest_id_manifest"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("manifest_id", name=op.f("pk_manifest_summary")),
    )
    summary = op.create_table(
        "model_summary",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("namespace", sa.String(length=80), nullable=False),
        sa.Column("tag_count", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("head_tag", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("capabilities", sa.String(length=128), nullable=False),
        sa.Column("sizes", sa.String(length=255), nullable=False),
        sa.Column("parameters", sa.String(length=16), nullable=False),
        sa.Column("quantization", sa.String(length=32), nullable=False),
        sa.Column("pulls", sa.BigInteger(), nullable=False),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repository.id"],
            name=op.f("fk_model_summary_repository_id_repository"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("repository_id", name=op.f("pk_model_summary")),
    )
    op.create_index("ix_model_summary_updated_at", "model_summary", ["updated_at"])
    op.create_index("ix_model_summary_pulls", "model_summary", ["pulls", "updated_at"])
    op.create_index("ix_model_summary_namespace", "model_summary", ["namespace", "updated_at"])
    _fill(summary)


def _fill(summary: sa.Table) -> None:
    """One row per repository with a tag, from the tables alone (written here rather than with
    the registry's code, which may change after this migration)."""
    bind = op.get_bind()
    repos = {
        r.id: r
        for r in bind.execute(sa.text("SELECT id, key, name FROM repository"))  # a few per model, not per pull
    }
    tags: dict[int, list[tuple[str, dt.datetime]]] = {}
    for r in bind.execute(sa.text("SELECT repository_id, name, updated_at FROM tag")):
        # SQLite hands back the text it stores; PostgreSQL a datetime.
        when = dt.datetime.fromisoformat(r.updated_at) if isinstance(r.updated_at, str) else r.updated_at
        tags.setdefault(r.repository_id, []).append((r.name, when))
    pulls = {
        r.repository_id: int(r.total or 0)
        for r in bind.execute(
            sa.text("SELECT repository_id, SUM(count) AS total FROM pull_count GROUP BY repository_id")
        )
    }
    rows = []
    for repo_id, repo_tags in tags.items():
        repo = repos[repo_id]
        newest = max(repo_tags, key=lambda t: t[1].replace(tzinfo=None))
        head = next((t for t in repo_tags if t[0].lower() == "latest"), newest)
        rows.append(
            {
                "repository_id": repo_id,
                "namespace": repo.key.split("/", 1)[0] if "/" in repo.key else "library",
                "tag_count": len(repo_tags),
                "updated_at": newest[1],
                "head_tag": head[0],
                "description": "",
                "capabilities": "",
                "sizes": "",
                "parameters": "",
                "quantization": "",
                "pulls": pulls.get(repo_id, 0),
                "search_text": repo.name.lower(),
            }
        )
    if rows:
        op.bulk_insert(summary, rows)


def downgrade() -> None:
    op.drop_index("ix_model_summary_namespace", table_name="model_summary")
    op.drop_index("ix_model_summary_pulls", table_name="model_summary")
    op.drop_index("ix_model_summary_updated_at", table_name="model_summary")
    op.drop_table("model_summary")
    op.drop_table("manifest_summary")
