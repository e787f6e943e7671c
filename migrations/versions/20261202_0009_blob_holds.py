"""blob holds: who may write or delete a blob's bytes right now (registry.gc)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blob") as batch:
        batch.add_column(sa.Column("generation", sa.String(32), nullable=True))
        batch.add_column(sa.Column("held_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blob") as batch:
        batch.drop_column("held_until")
        batch.drop_column("generation")
