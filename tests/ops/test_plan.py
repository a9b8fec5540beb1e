"""The operations' decisions, pure: which status each operation applies to, and why not."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nightshift.domain.models import JobKind, Run
from nightshift.domain.status import TRANSITIONS, RunStatus
from nightshift.errors import Conflict
from nightshift.operations import OPERATIONS, RESTART, RULES, plan, restarted_from

S = RunStatus
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def run_in(status: RunStatus, reason: str | None = None) -> Run:
    return Run(7, 1, "shop", JobKind.PYTHON, status, NOW, NOW, reason=reason)


APPLIES = {
    ("stop", S.RUNNING): (S.STOPPING, False),
    ("resume", S.STOPPED): (S.PENDING, False),
    ("force-stop", S.RUNNING): (S.STOPPING, True),
    ("force-stop", S.STOPPING): (S.STOPPING, True),
    ("cancel", S.PENDING): (S.CANCELLED, False),
    ("cancel", S.STOPPED): (S.CANCELLED, False),
}


@pytest.mark.parametrize("operation", [op for op in OPERATIONS if op != RESTART])
@pytest.mark.parametrize("status", list(RunStatus))
def test_each_operation_applies_to_its_statuses_only(operation: str, status: RunStatus) -> None:
    run = run_in(status)
    if (operation, status) in APPLIES:
        change = plan(operation, run, who="ops-bot")
        assert (change.status, change.kill) == APPLIES[operation, status]
        assert change.expected == status and change.log == f"{operation} requested by ops-bot"
        assert change.status == status or change.status in TRANSITIONS[status]
    else:
        with pytest.raises(Conflict) as caught:
            plan(operation, run)
        message = str(caught.value)
        assert message.startswith(f"cannot {operation} run 7: ")
        assert len(message) > len(f"cannot {operation} run 7: ") + 5  # a reason, not a code


def test_the_reasons_say_what_to_do_instead() -> None:
    def why(operation: str, status: RunStatus) -> str:
        with pytest.raises(Conflict) as caught:
            plan(operation, run_in(status))
        return str(caught.value)

    assert why("stop", S.PENDING) == "cannot stop run 7: it has not started: cancel it instead"
    assert why("cancel", S.RUNNING) == "cannot cancel run 7: it is running: stop it first"
    assert "force-stop" in why("stop", S.STOPPING)
    assert why("resume", S.SUCCEEDED).endswith("it has finished (succeeded): restart it to run "
                                               "its job again")  # fmt: skip
    assert RULES["force-stop"][S.RUNNING].reason == "force-stopped"


def test_a_restart_is_linked_by_its_reason() -> None:
    assert restarted_from(run_in(S.PENDING, reason="restart of run 42")) == 42
    assert restarted_from(run_in(S.PENDING, reason="resumed")) is None
    assert restarted_from(run_in(S.PENDING)) is None
    # Later operations keep the link; without one they say what happened.
    assert plan("cancel", run_in(S.PENDING, reason="restart of run 42")).reason is None
    assert plan("cancel", run_in(S.PENDING)).reason == "cancelled"
    assert plan("resume", run_in(S.STOPPED, reason="force-stopped")).reason == "resumed"
