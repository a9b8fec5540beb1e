"""Statistics roll-up tables; indexes for statistics, pruning and metrics

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

from nightshift.store.tables import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_OPEN = "status IN ('pending', 'running', 'stopping', 'stopped')"


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("runs_started", ["started_at"], unique=False)
        batch_op.create_index("runs_finished", ["finished_at"], unique=False)
        batch_op.create_index(
            "runs_open",
            ["status", "app"],
            unique=False,
            postgresql_where=sa.text(_OPEN),
            sqlite_where=sa.text(_OPEN),
        )

    for name, at in (("run_stats", "minute"), ("run_stats_hourly", "hour")):
        op.create_table(
            name,
            sa.Column("app", sa.String(length=100), nullable=False),
            sa.Column(at, UtcDateTime(), nullable=False),
            sa.Column("created", sa.Integer(), nullable=False),
            sa.Column("started", sa.Integer(), nullable=False),
            sa.Column("wait_sum", sa.Float(), nullable=False),
            sa.Column("wait_min", sa.Float(), nullable=True),
            sa.Column("wait_max", sa.Float(), nullable=True),
            sa.Column("succeeded", sa.Integer(), nullable=False),
            sa.Column("failed", sa.Integer(), nullable=False),
            sa.Column("executions", sa.Integer(), nullable=False),
            sa.Column("run_seconds", sa.Float(), nullable=False),
            sa.Column("duration_max", sa.Float(), nullable=True),
            sa.ForeignKeyConstraint(["app"], ["apps.name"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("app", at),
        )
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.create_index(f"{name}_{at}", [at], unique=False)

    for name, at in (("run_stats_hist", "minute"), ("run_stats_hist_hourly", "hour")):
        op.create_table(
            name,
            sa.Column("app", sa.String(length=100), nullable=False),
            sa.Column(at, UtcDateTime(), nullable=False),
            sa.Column("bin", sa.Integer(), nullable=False),
            sa.Column("count", sa.Integer(), nullable=False),
            sa.ForeignKeyConstraint(["app"], ["apps.name"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("app", at, "bin"),
        )


def downgrade() -> None:
    op.drop_table("run_stats_hist_hourly")
    op.drop_table("run_stats_hist")
    for name, at in (("run_stats_hourly", "hour"), ("run_stats", "minute")):
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_index(f"{name}_{at}")
        op.drop_table(name)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(
            "runs_open", postgresql_where=sa.text(_OPEN), sqlite_where=sa.text(_OPEN)
        )
        batch_op.drop_index("runs_finished")
        batch_op.drop_index("runs_started")
