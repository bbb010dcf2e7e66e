"""The bn_noisy variant (issue 12).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FIVE = "variant IN ('plain', 'bn', 'bn_after', 'layer_norm', 'group_norm')"
SIX = "variant IN ('plain', 'bn', 'bn_after', 'layer_norm', 'group_norm', 'bn_noisy')"


def _allow(check: str) -> None:
    # SQLite rebuilds the table: keep AUTOINCREMENT, so ids are never reused
    with op.batch_alter_table("runs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(op.f("ck_runs_variant"), type_="check")
        batch.create_check_constraint(op.f("ck_runs_variant"), check)


def upgrade() -> None:
    _allow(SIX)  # "bn_noisy" fits the column's 16 characters


def downgrade() -> None:
    # A bn_noisy run cannot stay under the narrower constraint: it is deleted, and what hangs
    # off it (curve points, layer statistics) with it, by the foreign keys' ON DELETE CASCADE.
    op.execute("DELETE FROM runs WHERE variant = 'bn_noisy'")
    _allow(FIVE)
