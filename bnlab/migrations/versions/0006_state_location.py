"""Where an experiment's training state is, and its sha256, named in its row (issue 13).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite may rebuild the table: keep AUTOINCREMENT, so ids are never reused
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("state_location", sa.String(1024), nullable=True))
        batch.add_column(sa.Column("state_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("state_sha256")
        batch.drop_column("state_location")
