"""blob chunk sums

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 23:07:35.310960
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blob", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chunk_size", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("chunk_sums", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blob", schema=None) as batch_op:
        batch_op.drop_column("chunk_sums")
        batch_op.drop_column("chunk_size")
