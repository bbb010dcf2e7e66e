"""The variants beyond the study's pair: bn_after, layer_norm, group_norm (issue 11).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PAIR = "variant IN ('plain', 'bn')"
ALL = "variant IN ('plain', 'bn', 'bn_after', 'layer_norm', 'group_norm')"


def _allow(check: str, width: int, was: int) -> None:
    # SQLite rebuilds the table: keep AUTOINCREMENT, so ids are never reused
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(op.f("ck_runs_variant"), type_="check")
        batch.alter_column(
            "variant", type_=sa.String(width), existing_type=sa.String(was), existing_nullable=False
        )
        batch.create_check_constraint(op.f("ck_runs_variant"), check)


def upgrade() -> None:
    _allow(ALL, 16, 8)  # "layer_norm" and "group_norm" are 10 characters


def downgrade() -> None:
    _allow(PAIR, 8, 16)
