"""runs_parent, runs_root: only runs that have a parent (a root run adds no entry)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 07:30:00.000000

Most runs are roots, with parent_id and root_id NULL. On PostgreSQL an UPDATE that changes
an indexed column (a claim, a completion: status, started_at, the lease) writes a new entry in
every index of the row, NULLs included: two of the runs table's eleven always-written indexes
held nothing but NULLs for roots. The lookups (`root_id = :id`) imply NOT NULL, so both
planners still use the partial indexes.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_LINEAGE = (("runs_parent", "parent_id"), ("runs_root", "root_id"))


def upgrade() -> None:
    for name, column in _LINEAGE:
        op.execute(f"DROP INDEX IF EXISTS {name}")
        op.execute(f"CREATE INDEX {name} ON runs ({column}) WHERE {column} IS NOT NULL")


def downgrade() -> None:
    for name, column in _LINEAGE:
        op.execute(f"DROP INDEX IF EXISTS {name}")
        op.execute(f"CREATE INDEX {name} ON runs ({column})")
