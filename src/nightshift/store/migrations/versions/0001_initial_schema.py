"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 02:09:07.618428
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from nightshift.store.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column(
            "schedules_enabled", sa.Boolean(), server_default=sa.text("(true)"), nullable=False
        ),
        sa.Column("retention_days", sa.Integer(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "ns_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "jobs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("app", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "tags",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("schedule", sa.String(length=200), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("overlap", sa.String(length=10), nullable=False),
        sa.Column("catch_up", sa.String(length=10), nullable=False),
        sa.Column("max_lateness_s", sa.Float(), nullable=True),
        sa.Column(
            "retries",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("timeout_s", sa.Float(), nullable=True),
        sa.Column("low_priority", sa.Boolean(), nullable=False),
        sa.Column("start_at", UtcDateTime(), nullable=True),
        sa.Column("end_at", UtcDateTime(), nullable=True),
        sa.Column("start_delay_s", sa.Float(), nullable=False),
        sa.Column("jitter_s", sa.Float(), nullable=False),
        sa.Column("next_fire_at", UtcDateTime(), nullable=True),
        sa.Column("deactivated_reason", sa.Text(), nullable=True),
        sa.Column("hold", sa.String(length=10), nullable=True),
        sa.Column("declared", sa.Boolean(), nullable=False),
        sa.Column("system", sa.Boolean(), nullable=False),
        sa.Column("anchor_at", UtcDateTime(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("active_run_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["app"], ["apps.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app", "name", name="jobs_app_name_key"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "jobs_due",
            ["next_fire_at"],
            unique=False,
            postgresql_where=sa.text("enabled"),
            sqlite_where=sa.text("enabled"),
        )

    op.create_table(
        "runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("app", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("run_at", UtcDateTime(), nullable=False),
        sa.Column("scheduled_for", UtcDateTime(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("retry_of", sa.BigInteger(), nullable=True),
        sa.Column(
            "error",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("low_priority", sa.Boolean(), nullable=False),
        sa.Column("run_by", sa.String(length=200), nullable=True),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("parent_id", sa.BigInteger(), nullable=True),
        sa.Column("root_id", sa.BigInteger(), nullable=True),
        sa.Column("rank", sa.BigInteger(), nullable=False),
        sa.Column("descendants", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "state",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("skip_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_scheduled_for", UtcDateTime(), nullable=True),
        sa.Column("exclusive", sa.Boolean(), nullable=False),
        sa.Column("is_test", sa.Boolean(), nullable=False),
        sa.Column(
            "kill_requested", sa.Boolean(), server_default=sa.text("(false)"), nullable=False
        ),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", UtcDateTime(), nullable=True),
        sa.Column("lost_streak", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("children_total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("children_finished", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("children_failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "scheduled_for", "attempt", name="runs_fire_key"),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("runs_app", ["app", "id"], unique=False)
        batch_op.create_index(
            "runs_claim",
            ["low_priority", "rank", "run_at", "id"],
            unique=False,
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )
        batch_op.create_index("runs_created", ["created_at"], unique=False)
        batch_op.create_index("runs_job", ["job_id", "id"], unique=False)
        batch_op.create_index("runs_job_status", ["job_id", "status"], unique=False)
        batch_op.create_index(
            "runs_lease",
            ["lease_expires_at"],
            unique=False,
            postgresql_where=sa.text("status IN ('running', 'stopping')"),
            sqlite_where=sa.text("status IN ('running', 'stopping')"),
        )
        batch_op.create_index("runs_parent", ["parent_id"], unique=False)
        batch_op.create_index("runs_root", ["root_id"], unique=False)

    op.create_table(
        "run_logs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("run_logs", schema=None) as batch_op:
        batch_op.create_index("run_logs_run", ["run_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_logs", schema=None) as batch_op:
        batch_op.drop_index("run_logs_run")

    op.drop_table("run_logs")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("runs_root")
        batch_op.drop_index("runs_parent")
        batch_op.drop_index(
            "runs_lease",
            postgresql_where=sa.text("status IN ('running', 'stopping')"),
            sqlite_where=sa.text("status IN ('running', 'stopping')"),
        )
        batch_op.drop_index("runs_job_status")
        batch_op.drop_index("runs_job")
        batch_op.drop_index("runs_created")
        batch_op.drop_index(
            "runs_claim",
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )
        batch_op.drop_index("runs_app")

    op.drop_table("runs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "jobs_due", postgresql_where=sa.text("enabled"), sqlite_where=sa.text("enabled")
        )

    op.drop_table("jobs")
    op.drop_table("ns_meta")
    op.drop_table("apps")
