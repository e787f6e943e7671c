"""repository page: a description and README set on the web site for the whole model

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("repository") as batch:
        batch.add_column(sa.Column("description", sa.Text(), nullable=True))
        batch.add_column(sa.Column("readme", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("repository") as batch:
        batch.drop_column("readme")
        batch.drop_column("description")
