"""alert rules and deliveries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 03:30:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from nightshift.store.tables import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_UNDELIVERED = "status IN ('pending', 'sending')"


def _partial(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(
        name,
        table,
        columns,
        unique=False,
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def upgrade() -> None:
    # 0003's runs_finished and runs_started serve the dispatcher's scans; this one answers
    # "does a later attempt follow this failed run?"
    _partial("runs_retry_of", "runs", ["retry_of"], "retry_of IS NOT NULL")

    op.create_table(
        "alert_rules",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("app", sa.String(length=100), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("on_failed", sa.Boolean(), nullable=False),
        sa.Column("on_long_running", sa.Boolean(), nullable=False),
        sa.Column("max_duration_s", sa.Float(), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("emails", _JSON, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app"], ["apps.name"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("alert_rules_app", "alert_rules", ["app", "id"], unique=False)
    op.create_index("alert_rules_job", "alert_rules", ["job_id"], unique=False)

    op.create_table(
        "alert_deliveries",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.String(length=20), nullable=False),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("delivered_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["rule_id"], ["alert_rules.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rule_id", "run_id", "event", "channel", name="alert_deliveries_key"),
    )
    _partial("alert_deliveries_due", "alert_deliveries", ["next_attempt_at"], _UNDELIVERED)
    op.create_index("alert_deliveries_run", "alert_deliveries", ["run_id"], unique=False)
    op.create_index("alert_deliveries_rule", "alert_deliveries", ["rule_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_table("alert_deliveries")
    op.drop_table("alert_rules")
    op.drop_index("runs_retry_of", table_name="runs")
