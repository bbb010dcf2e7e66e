"""Bundles: imported experiments (issue 14). Each experiment keeps the provenance its worker
recorded when it trained (versions, device, CPU, the dataset's sha256s, the seed), and an
imported one where it came from.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite may rebuild the table: keep AUTOINCREMENT, so ids are never reused
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("provenance", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("imported_from", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("imported_from")
        batch.drop_column("provenance")
