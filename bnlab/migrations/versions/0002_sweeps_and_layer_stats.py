"""Sweeps (grids of experiments) and per-layer statistics at sample points.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_sweeps_idempotency_key")),
        sqlite_autoincrement=True,
    )
    # SQLite rebuilds the table: keep AUTOINCREMENT, so ids are never reused
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("sweep_id", sa.Integer(), nullable=True))
        batch.create_index(batch.f("ix_experiments_sweep_id"), ["sweep_id"])
        batch.create_foreign_key(
            batch.f("fk_experiments_sweep_id_sweeps"),
            "sweeps",
            ["sweep_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.create_table(
        "layer_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("p15", sa.Float(), nullable=False),
        sa.Column("p50", sa.Float(), nullable=False),
        sa.Column("p85", sa.Float(), nullable=False),
        sa.Column("dead_fraction", sa.Float(), nullable=False),
        sa.Column("grad_norm", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_layer_stats_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layer_stats")),
        sa.UniqueConstraint(
            "run_id", "step", "layer", name=op.f("uq_layer_stats_run_id_step_layer")
        ),
    )


def downgrade() -> None:
    op.drop_table("layer_stats")
    # SQLite rebuilds the table: keep AUTOINCREMENT, so ids are never reused
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(batch.f("fk_experiments_sweep_id_sweeps"), type_="foreignkey")
        batch.drop_index(batch.f("ix_experiments_sweep_id"))
        batch.drop_column("sweep_id")
    op.drop_table("sweeps")
