"""Why BN helps: the probes' measurements per net and step (issue 12).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each table: its measurement's columns, and those (after run_id) that name one row.
TABLES: dict[str, tuple[list[sa.Column[Any]], tuple[str, ...]]] = {
    "landscapes": ([sa.Column("beta_smoothness", sa.Float(), nullable=True)], ("step",)),
    "landscape_points": (
        [
            sa.Column("step_size", sa.Float(), nullable=False),
            sa.Column("loss", sa.Float(), nullable=True),
            sa.Column("grad_change", sa.Float(), nullable=True),
        ],
        ("step", "step_size"),
    ),
    "layer_shifts": (
        [
            sa.Column("layer", sa.Integer(), nullable=False),
            sa.Column("norm", sa.Float(), nullable=True),
            sa.Column("cosine", sa.Float(), nullable=True),
        ],
        ("step", "layer"),
    ),
    "sharpness": (
        [
            sa.Column("eigenvalue", sa.Float(), nullable=True),
            sa.Column("iterations", sa.Integer(), nullable=False),
            sa.Column("edge", sa.Float(), nullable=False),
        ],
        ("step",),
    ),
}


def upgrade() -> None:
    for table, (columns, key) in TABLES.items():
        op.create_table(
            table,
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("run_id", sa.Integer(), nullable=False),
            sa.Column("step", sa.Integer(), nullable=False),
            *columns,
            sa.ForeignKeyConstraint(
                ["run_id"], ["runs.id"], name=op.f(f"fk_{table}_run_id_runs"), ondelete="CASCADE"
            ),
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
            sa.UniqueConstraint("run_id", *key, name=op.f(f"uq_{table}_run_id_{'_'.join(key)}")),
        )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
