"""jobs_due: a predicate SQLite's planner can match

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 05:00:00.000000

0001 created `jobs_due ON jobs (next_fire_at) WHERE enabled`. SQLAlchemy renders the store's
`WHERE jobs.enabled` as `jobs.enabled = 1` on SQLite, and SQLite uses a partial index only
when the query's WHERE contains the index's predicate as written: the scheduler's due query
and `next_fire_due` scanned every job. The index is recreated with `WHERE enabled = 1`.
PostgreSQL renders `WHERE jobs.enabled` and its planner proves the implication anyway, so its
index stays as it is.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP INDEX IF EXISTS jobs_due")
    op.execute("CREATE INDEX jobs_due ON jobs (next_fire_at) WHERE enabled = 1")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP INDEX IF EXISTS jobs_due")
    op.execute("CREATE INDEX jobs_due ON jobs (next_fire_at) WHERE enabled")
