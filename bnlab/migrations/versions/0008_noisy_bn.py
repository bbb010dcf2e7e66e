"""The bn_noisy variant (issue 12).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
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
    # A bn_noisy run cannot stay under the narrower constraint, and an older bnlab cannot read
    # an experiment that asked for one: refuse rather than delete a user's experiments.
    # (Deleting its runs alone would leave their points behind on SQLite, where migrations run
    # without foreign keys, and the experiment's spec naming a variant it no longer has.)
    noisy = op.get_bind().execute(
        sa.text("SELECT DISTINCT experiment_id FROM runs WHERE variant = 'bn_noisy'")
    )
    ids = sorted(row[0] for row in noisy)
    if ids:
        raise RuntimeError(
            f"experiments {', '.join(map(str, ids))} trained bn_noisy nets, which the schema "
            "before 0008 cannot hold: delete them before downgrading"
        )
    _allow(FIVE)
