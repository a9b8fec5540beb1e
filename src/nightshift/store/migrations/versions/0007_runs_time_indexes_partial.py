"""runs_started, runs_finished: only runs that have started / finished

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 01:00:00.000000

On PostgreSQL a claim and a completion each rewrite the run with a changed indexed column, so
each writes a new entry into every index whose predicate the row meets (migration 0006). A
pending run has neither time and a running one no end: three of the entries an on-demand run
wrote from its insert to its completion held a NULL that no lookup reads. The lookups (`column
>= :since`, `column < :until`) imply NOT NULL, so both planners still use the partial indexes.
SQLite rewrites only the indexes whose columns change: it saves the two NULL entries of an
insert.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TIMES = (("runs_started", "started_at"), ("runs_finished", "finished_at"))


def upgrade() -> None:
    for name, column in _TIMES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
        op.execute(f"CREATE INDEX {name} ON runs ({column}) WHERE {column} IS NOT NULL")


def downgrade() -> None:
    for name, column in _TIMES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
        op.execute(f"CREATE INDEX {name} ON runs ({column})")
