"""Forks: lineage and kept training states (issue 14).

An experiment can be forked from any sample point whose training state was kept
(`keep_states_every`): `kept_states` names those states; a fork's row names its parent, the
step it was forked at, and what it changed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite rebuilds the table: keep AUTOINCREMENT, so ids are never reused
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("fork_step", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("fork_changes", sa.JSON(), nullable=True))
        batch.create_index(op.f("ix_experiments_parent_id"), ["parent_id"])
        batch.create_foreign_key(
            op.f("fk_experiments_parent_id_experiments"),
            "experiments",
            ["parent_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "kept_states",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("location", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_kept_states_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "step", name=op.f("pk_kept_states")),
    )


def downgrade() -> None:
    op.drop_table("kept_states")
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(op.f("fk_experiments_parent_id_experiments"), type_="foreignkey")
        batch.drop_index(op.f("ix_experiments_parent_id"))
        batch.drop_column("fork_changes")
        batch.drop_column("fork_step")
        batch.drop_column("parent_id")
