"""Every SQLite statement the test suite sends, with its query plan: where a read scans a table.

    PYTHONPATH=bench .venv/bin/python -m pytest -q -p plan_audit -k 'not postgresql' tests
    .venv/bin/python bench/plan_audit.py [--plans /tmp/nightshift-plans.json] [--all]

As a pytest plugin (`-p plan_audit`) it listens to every engine's `before_cursor_execute` and
runs `EXPLAIN QUERY PLAN` of each distinct SQLite statement on the same connection, with the
same parameters; the plans go to PLAN_AUDIT_OUT (default below) when the session ends. Run as a
script, it prints the statements whose plan scans a table (`SCAN runs`, `SCAN jobs USING INDEX
...`: every row or every entry, unless a LIMIT stops it early), or all of them with --all.

SQLite never runs ANALYZE here (nor does the service), so its plans do not depend on the
tables' sizes: a plan seen on a test's small database is the plan at 1,000,000 runs
(bench/PROFILE.md, session 19). Statements the store runs on the driver itself (`Prepared`:
claim, complete, fire) do not pass through the event; their plans have tests of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

DEFAULT_OUT = "/tmp/nightshift-plans.json"
_PLANS: dict[str, list[str]] = {}
_SCAN = re.compile(r"SCAN (\w+)")
_COLUMN = r"[\w.\"]+(?: AS \w+)?"
_SELECT_LIST = re.compile(rf"^SELECT (?:DISTINCT )?(?:{_COLUMN}, )+{_COLUMN} FROM ")  # shortened


def _explain(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    if conn.dialect.name != "sqlite" or many:
        return
    key = " ".join(statement.split())
    if key in _PLANS or key.split(" ", 1)[0].upper() not in ("SELECT", "UPDATE", "DELETE", "WITH"):
        return
    try:
        raw = conn.connection.dbapi_connection
        rows = raw.execute("EXPLAIN QUERY PLAN " + statement, parameters or ()).fetchall()
        _PLANS[key] = [row[3] for row in rows]
    except Exception as error:  # recorded, not raised: the test goes on
        _PLANS[key] = [f"not explained: {error}"]


def pytest_configure(config: Any) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "before_cursor_execute", _explain)


def pytest_unconfigure(config: Any) -> None:
    with open(os.environ.get("PLAN_AUDIT_OUT", DEFAULT_OUT), "w") as out:
        json.dump(_PLANS, out, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", default=os.environ.get("PLAN_AUDIT_OUT", DEFAULT_OUT))
    parser.add_argument("--all", action="store_true", help="every statement, not only scans")
    args = parser.parse_args()
    with open(args.plans) as source:
        plans: dict[str, list[str]] = json.load(source)
    shown = 0
    for statement, plan in sorted(plans.items()):
        scans = [step for step in plan if _SCAN.match(step) and "CONSTANT ROW" not in step]
        if scans or args.all:
            shown += 1
            print(_SELECT_LIST.sub("SELECT ... FROM ", statement, count=1))
            for step in plan:
                print("    " + step)
            print()
    print(f"{shown} of {len(plans)} statements" + ("" if args.all else " scan a table"))


if __name__ == "__main__":
    main()
