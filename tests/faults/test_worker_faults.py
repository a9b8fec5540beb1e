"""Workers that die or freeze while holding runs: leases expire, runs come back, stale writes
are fenced out.

Leases are short here (NIGHTSHIFT_LEASE_S=2) so that recovery happens within the test; the
worker processes run on the same host, but each was started before the other died, so only the
lease, not start-up recovery, can bring the runs back.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nightshift.domain.status import RunStatus
from tests.faults.conftest import Fleet, PgDatabase, alive, tail, wait_until

S = RunStatus
pytestmark = [pytest.mark.slow, pytest.mark.postgres]
LEASE = {"NIGHTSHIFT_LEASE_S": "2", "NIGHTSHIFT_HEARTBEAT_S": "0.3"}


def _python_job(service, name: str, function: str):  # type: ignore[no-untyped-def]
    return service.create_job(
        {"name": name, "kind": "python", "config": {"function": f"tests.faults.jobs:{function}"}}
    )


def _marks(folder: Path) -> Counter[int]:
    """How many times each run number started (one mark file per start)."""
    return Counter(int(p.name.split("-")[0]) for p in folder.iterdir())


@pytest.mark.timeout(120)
def test_a_killed_workers_runs_come_back_after_its_lease_and_only_those_run_twice(
    fleet: Fleet, fresh_pg: PgDatabase, outsider_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**LEASE, "NIGHTSHIFT_WORKER_PROCESSES": "3"}
    victim, survivor = fleet.add("victim", "worker", **env), fleet.add("survivor", "worker", **env)
    victim.start()
    survivor.start()
    store, service = outsider_factory(fresh_pg.url())
    job = _python_job(service, "slow", "mark_and_sleep")
    marks = tmp_path / "marks"
    marks.mkdir()
    # As many runs as slots: each worker ends up holding about 3 (a fresh worker may also
    # take a run or two committed while its claim ran, held for their time), so the victim
    # holds some, and the survivor has a slot free for the retries once its own runs end.
    total = 6
    enqueued = [
        service.run_now(job.id, params={"dir": str(marks), "n": n, "seconds": 2.5})
        for n in range(total)
    ]
    victim_owner = f":{victim.proc.pid}:"  # owners are host:pid:nonce

    def victim_executing() -> list:  # type: ignore[type-arg]
        running = store.list_runs(job_id=job.id, status=["running"], limit=100)
        return [r for r in running if victim_owner in (r.lease_owner or "")]

    def all_claimed_some_by_the_victim() -> bool:
        pending = store.list_runs(job_id=job.id, status=["pending"], limit=100)
        return not pending and bool(victim_executing())

    wait_until(all_claimed_some_by_the_victim, timeout=30, what="the victim holds some runs")
    victim.signal(signal.SIGKILL)
    killed_at = datetime.now(UTC)
    victim.wait()
    held = {r.id: r for r in victim_executing()}  # frozen now: nobody renews or ends them
    assert held

    def everything_done() -> bool:
        runs = store.list_runs(job_id=job.id, limit=100)
        return sum(r.status == S.SUCCEEDED for r in runs) == total and not any(
            r.status in (S.PENDING, S.RUNNING) for r in runs
        )

    wait_until(everything_done, timeout=60, what="every run succeeds, the held ones as retries")
    runs = store.list_runs(job_id=job.id, limit=100)
    retries = {r.retry_of: r for r in runs if r.attempt == 2}
    assert set(retries) == set(held)  # exactly the runs the victim was executing came back
    for run_id in held:
        lost = store.get_run(run_id)
        assert (lost.status, lost.reason) == (S.FAILED, "worker lost")
        assert retries[run_id].status == S.SUCCEEDED
    assert len(runs) == total + len(held)
    # Counted outside the database: each run number succeeded once; only the held ones started
    # twice (or once, if the victim claimed one but died before its process started it).
    assert Counter(r.params["n"] for r in runs if r.status == S.SUCCEEDED) == Counter(range(total))
    held_numbers = {r.params["n"] for r in held.values()}
    assert all(count == 1 for n, count in _marks(marks).items() if n not in held_numbers)
    assert all(_marks(marks)[n] in (1, 2) for n in held_numbers)
    assert set(_marks(marks)) == set(range(total))

    requeued = [(store.get_run(i).finished_at - killed_at).total_seconds() for i in held]
    restarted = [(retries[i].started_at - killed_at).total_seconds() for i in held]
    print(
        f"SIGKILL recovery: {len(held)} held runs back to pending {max(requeued):.2f} s after "
        f"the kill (lease 2 s), executing again after {max(restarted):.2f} s; "
        f"{len(enqueued)} runs, none lost"
    )
    assert max(requeued) < 2 + 10  # the lease, plus a recovery pass on a loaded machine
    assert alive(survivor), tail(survivor)


@pytest.mark.timeout(120)
def test_a_worker_paused_past_its_lease_cannot_overwrite_the_retry(
    fleet: Fleet, fresh_pg: PgDatabase, outsider_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {**LEASE, "NIGHTSHIFT_WORKER_PROCESSES": "1"}
    stale = fleet.add("stale", "worker", **env)
    stale.start()
    store, service = outsider_factory(fresh_pg.url())
    job = _python_job(service, "exiting", "exit_when_stale")
    marks = tmp_path / "marks"
    marks.mkdir()
    first = service.run_now(job.id, params={"dir": str(marks), "seconds": 1.0})
    wait_until(lambda: list(marks.iterdir()), timeout=30, what="attempt 1 starts")
    assert f":{stale.proc.pid}:" in store.get_run(first.id).lease_owner
    stale.signal(signal.SIGSTOP)  # frozen: no heartbeat; its job process runs on and finishes
    paused_at = time.monotonic()

    fresh = fleet.add("fresh", "worker", **env)
    fresh.start()

    def retried():  # type: ignore[no-untyped-def]
        runs = store.list_runs(job_id=job.id)
        return next((r for r in runs if r.attempt == 2 and r.status == S.SUCCEEDED), None)

    retry = wait_until(retried, timeout=40, what="the retry succeeds on the fresh worker")
    assert retry.retry_of == first.id
    retry_logs = [line.message for line in store.get_logs(retry.id)]
    paused_for = time.monotonic() - paused_at

    stale.signal(signal.SIGCONT)  # it wakes up holding an outcome for a run it no longer owns
    wait_until(
        lambda: "lease lost" in tail(stale) or "no longer held here" in tail(stale),
        timeout=30,
        what="the stale worker learns it lost the run",
    )
    time.sleep(1.0)  # a fault that lasts: give any stray write time to land (there must be none)

    lost = store.get_run(first.id)
    assert (lost.status, lost.reason, lost.attempt) == (S.FAILED, "worker lost", 1)
    assert lost.result is None and lost.lease_owner is None
    assert not [m for m in store.get_logs(first.id) if "finished" in m.message]
    after = store.get_run(retry.id)
    assert (after.status, after.result) == (S.SUCCEEDED, retry.result)
    assert [line.message for line in store.get_logs(retry.id)] == retry_logs
    job_after = store.get_job(job.id)
    assert job_after.enabled, "the stale attempt's EXIT must not deactivate the job"
    assert len(list(marks.iterdir())) == 2  # both attempts executed: the write was refused
    assert alive(stale), tail(stale)
    print(f"SIGSTOP: paused {paused_for:.1f} s; the stale outcome was fenced out")
