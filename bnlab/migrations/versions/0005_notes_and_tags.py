"""Names, notes and tags on experiments and sweeps (issue 14).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNERS = (("experiments", "experiment"), ("sweeps", "sweep"))


def upgrade() -> None:
    for table, owner in OWNERS:
        # SQLite may rebuild the table: keep AUTOINCREMENT, so ids are never reused
        with op.batch_alter_table(table, table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.add_column(sa.Column("name", sa.String(200), nullable=True))
            batch.add_column(sa.Column("notes", sa.Text(), server_default="", nullable=False))
        op.create_table(
            f"{owner}_tags",
            sa.Column("tag", sa.String(40), nullable=False),
            sa.Column(f"{owner}_id", sa.Integer(), nullable=False),
            sa.ForeignKeyConstraint(
                [f"{owner}_id"],
                [f"{table}.id"],
                name=op.f(f"fk_{owner}_tags_{owner}_id_{table}"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("tag", f"{owner}_id", name=op.f(f"pk_{owner}_tags")),
        )
        op.create_index(op.f(f"ix_{owner}_tags_tag"), f"{owner}_tags", ["tag"])


def downgrade() -> None:
    for table, owner in OWNERS:
        op.drop_index(op.f(f"ix_{owner}_tags_tag"), table_name=f"{owner}_tags")
        op.drop_table(f"{owner}_tags")
        with op.batch_alter_table(table, table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.drop_column("notes")
            batch.drop_column("name")
