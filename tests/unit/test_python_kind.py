"""The python kind: config, decorator, context, and runs in real child processes."""

from __future__ import annotations

import asyncio
import math
import re
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nightshift.context import Context, LocalBackend
from nightshift.declare import DeclaredJob, find_declared, job
from nightshift.domain.models import Job, JobKind
from nightshift.domain.signals import Signal
from nightshift.errors import InvalidInput, NotFound
from nightshift.worker.executor import MemoryIO, Task
from nightshift.worker.kinds.python import PythonExecutor

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:  # so that `tests.jobs_sample` imports here as in the children
    sys.path.insert(0, ROOT)

from tests import jobs_sample  # noqa: E402

module_loop = pytest.mark.asyncio(loop_scope="module")


def make_task(
    function: str,
    params: dict[str, Any] | None = None,
    *,
    config_params: dict[str, Any] | None = None,
    state: Any = None,
    run_id: int = 7,
    attempt: int = 1,
) -> Task:
    reference = function if ":" in function else f"tests.jobs_sample:{function}"
    config: dict[str, Any] = {"function": reference}
    if config_params is not None:
        config["params"] = config_params
    job_ = Job(id=1, app="shop", name=function, kind=JobKind.PYTHON, config=config)
    return Task(run_id=run_id, job=job_, params=params or {}, attempt=attempt, state=state)


async def wait_for_line(io: MemoryIO, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in message for _, message in io.lines):
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line with {text!r} in {io.lines}")
        await asyncio.sleep(0.01)


class CountingIO(MemoryIO):
    """MemoryIO that counts progress calls and refuses unknown child jobs."""

    def __init__(self) -> None:
        super().__init__()
        self.progress_calls = 0

    def progress(self, done: float, total: float | None = None) -> None:
        self.progress_calls += 1
        super().progress(done, total)

    async def enqueue(self, job: str, params: dict[str, Any] | None, low_priority: bool) -> int:
        if job == "no_such_job":
            raise NotFound("job", job)
        return await super().enqueue(job, params, low_priority)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def executor():
    ex = PythonExecutor(processes=2, imports=["tests.jobs_sample"], sys_path=[ROOT])
    await ex.start()
    yield ex
    await ex.close()


@pytest_asyncio.fixture(loop_scope="module")
async def single():
    """A pool of one process (a bad --import module does not keep it from starting)."""
    ex = PythonExecutor(processes=1, imports=["tests.no_such_module_at_start"], sys_path=[ROOT])
    await ex.start()
    yield ex
    await ex.close()


# -- config -------------------------------------------------------------------------------------


def test_validate_normalises_without_importing() -> None:
    ex = PythonExecutor(processes=1, imports=[])
    assert ex.validate({"function": " not_installed.jobs:Report.run "}) == {
        "function": "not_installed.jobs:Report.run",
        "params": {},
    }
    assert ex.validate({"function": "m:f", "params": {"a": 1}}) == {
        "function": "m:f",
        "params": {"a": 1},
    }
    assert "not_installed" not in sys.modules


def test_validated_params_are_a_copy() -> None:
    params = {"day": "monday", "to": ["a@example.com"], "opts": {"bcc": True}}
    validated = PythonExecutor(processes=1).validate({"function": "m:f", "params": params})
    params["to"].append("b@example.com")
    params["opts"]["bcc"] = False
    params["day"] = "tuesday"
    assert validated["params"] == {"day": "monday", "to": ["a@example.com"], "opts": {"bcc": True}}


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"function": ""},
        {"function": 3},
        {"function": "module_only"},
        {"function": "mod:"},
        {"function": ":fn"},
        {"function": "a b:c"},
        {"function": "a..b:c"},
        {"function": "mod:fn()"},
        {"function": "class.mod:fn"},
        {"function": "mod:fn:other"},
    ],
)
def test_validate_rejects_bad_function(config: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="'module:function'") as info:
        PythonExecutor(processes=1).validate(config)
    assert info.value.field == "config.function"


def test_validate_rejects_bad_params_and_unknown_fields() -> None:
    ex = PythonExecutor(processes=1)
    with pytest.raises(InvalidInput) as info:
        ex.validate({"function": "m:f", "params": [1]})
    assert info.value.field == "config.params"
    with pytest.raises(InvalidInput) as info:
        ex.validate({"function": "m:f", "params": {1: "a"}})  # from Python: JSON has str keys
    assert info.value.field == "config.params"
    with pytest.raises(InvalidInput) as info:
        ex.validate({"function": "m:f", "url": "x"})
    assert info.value.field == "config.url"
    with pytest.raises(InvalidInput) as info:
        ex.validate("m:f")  # type: ignore[arg-type]
    assert info.value.field == "config"


# -- decorator ----------------------------------------------------------------------------------


def test_decorator_declares_without_wrapping() -> None:
    declared = jobs_sample.declared_job.__nightshift_job__
    assert declared == DeclaredJob(
        name="custom-name",
        app="shop",
        fields={"schedule": "0 8 * * *", "retries": {"max": 3}, "timeout_s": 600},
        function="tests.jobs_sample:declared_job",
        config={"function": "tests.jobs_sample:declared_job", "params": {}},
    )
    bare = jobs_sample.bare_declared.__nightshift_job__
    assert (bare.name, bare.app, bare.fields) == ("bare_declared", "default", {})
    assert callable(jobs_sample.declared_job)
    assert jobs_sample.declared_job.__name__ == "declared_job"


def _plain(ctx: Context) -> None:
    pass


def test_decorator_returns_the_original_function_and_keeps_given_fields() -> None:
    def fn(ctx: Context) -> None:
        pass

    fn.__qualname__ = "fn"  # pretend it is module level
    decorated = job(
        "every 5m",
        retries={"max": 2, "backoff_s": 5},
        tags=("a", "b"),
        enabled=False,
        params={"x": 1},
        overlap="queue",
    )(fn)
    assert decorated is fn
    declared = fn.__nightshift_job__  # type: ignore[attr-defined]
    assert declared.fields == {
        "schedule": "every 5m",
        "overlap": "queue",
        "tags": ["a", "b"],
        "retries": {"max": 2, "backoff_s": 5},
        "enabled": False,
    }
    assert declared.config == {"function": f"{__name__}:fn", "params": {"x": 1}}
    hash(declared)


def test_decorator_refuses_what_a_worker_cannot_import() -> None:
    def nested(ctx: Context) -> None:
        pass

    with pytest.raises(TypeError, match="nested function"):
        job(nested)
    with pytest.raises(TypeError, match="lambda"):
        job()(lambda ctx: None)
    with pytest.raises(TypeError):
        job(retries="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        job(params={"when": object()})


def test_find_declared() -> None:
    found = find_declared(jobs_sample)
    assert [(d.app, d.name) for d in found] == [
        ("shop", "custom-name"),
        ("default", "bare_declared"),
    ]

    fake = types.ModuleType("fake")
    fake.a = jobs_sample.declared_job  # type: ignore[attr-defined]
    fake.b = jobs_sample.declared_job  # type: ignore[attr-defined]  # an alias counts once
    fake.c = _plain  # type: ignore[attr-defined]
    assert len(find_declared(fake)) == 1

    def one(ctx: Context) -> None:
        pass

    def two(ctx: Context) -> None:
        pass

    one.__qualname__, two.__qualname__ = "one", "two"
    fake.one, fake.two = job(name="dup")(one), job(name="dup")(two)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="declared twice"):
        find_declared(fake)


# -- context outside a worker -------------------------------------------------------------------


def test_context_in_memory() -> None:
    backend = LocalBackend()
    ctx = Context(params={"a": 1}, app="shop", run_id=3, job="report", state=5, backend=backend)
    assert (ctx.params, ctx.app, ctx.run_id, ctx.job, ctx.attempt, ctx.state) == (
        {"a": 1},
        "shop",
        3,
        "report",
        1,
        5,
    )
    assert ctx.log.name == "nightshift.job.report"
    ctx.checkpoint((1, 2))
    assert ctx.state == [1, 2]
    assert backend.checkpoints == [[1, 2]]
    with pytest.raises(TypeError, match="JSON-serialisable"):
        ctx.checkpoint({"x": object()})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        ctx.checkpoint(math.nan)
    assert ctx.state == [1, 2]
    with pytest.raises(TypeError):
        ctx.progress("1")  # type: ignore[arg-type]
    ctx.progress(5, total=10)
    assert backend.progress_value == (5.0, 10.0)
    assert ctx.enqueue(jobs_sample.declared_job) == 1
    assert ctx.enqueue(jobs_sample.plain_target, params={"p": 1}, low_priority=True) == 2
    assert ctx.enqueue("other") == 3
    assert backend.enqueued == [
        ("custom-name", None, False),
        ("plain_target", {"p": 1}, True),
        ("other", None, False),
    ]
    with pytest.raises(TypeError):
        ctx.enqueue(42)
    assert not ctx.should_stop()


# -- runs in child processes --------------------------------------------------------------------


@module_loop
async def test_sync_function_sees_its_context(executor: PythonExecutor) -> None:
    io = MemoryIO()
    task = make_task("echo", {"b": 2}, config_params={"a": 1, "b": 1}, run_id=11, attempt=2)
    outcome = await executor.execute(task, io)
    assert outcome.status == "succeeded"
    assert outcome.signal is Signal.OK
    assert outcome.result == {"returned": "OK"}
    assert io.lines == [
        ("INFO", "params=[('a', 1), ('b', 2)] app=shop run_id=11 job=echo attempt=2 state=None")
    ]


@module_loop
async def test_async_function(executor: PythonExecutor) -> None:
    io = MemoryIO()
    outcome = await executor.execute(make_task("async_job", {"n": 3}), io)
    assert (outcome.status, outcome.signal, outcome.result) == (
        "succeeded",
        Signal.SLEEP,
        {"returned": "SLEEP"},
    )
    assert io.lines == [("INFO", "async 3")]


@module_loop
@pytest.mark.parametrize("value", ["OK", "SLEEP", "STOP", "EXIT"])
@pytest.mark.parametrize("as_signal", [True, False])
async def test_return_values(executor: PythonExecutor, value: str, as_signal: bool) -> None:
    outcome = await executor.execute(
        make_task("returns", {"value": value, "signal": as_signal}), MemoryIO()
    )
    assert outcome.status == "succeeded"
    assert outcome.signal is Signal(value)
    assert outcome.result == {"returned": value}
    assert outcome.deactivate is None


@module_loop
async def test_none_is_ok(executor: PythonExecutor) -> None:
    outcome = await executor.execute(make_task("returns", {"value": None}), MemoryIO())
    assert (outcome.status, outcome.signal) == ("succeeded", Signal.OK)


@module_loop
@pytest.mark.parametrize(("value", "shown"), [(42, "42"), ("ok", "'ok'"), ([1], "[1]")])
async def test_invalid_return_value_deactivates(
    executor: PythonExecutor, value: Any, shown: str
) -> None:
    outcome = await executor.execute(make_task("returns", {"value": value}), MemoryIO())
    reason = f"invalid return value {shown} (expected nightshift.OK, SLEEP, STOP, EXIT or None)"
    assert (outcome.status, outcome.permanent, outcome.deactivate) == ("failed", True, reason)
    assert outcome.error is not None
    assert outcome.error["message"] == reason
    assert outcome.signal is None


@module_loop
async def test_exception_is_a_retryable_failure_with_traceback(executor: PythonExecutor) -> None:
    outcome = await executor.execute(make_task("fails", {"what": "no stock"}), MemoryIO())
    assert (outcome.status, outcome.permanent, outcome.deactivate) == ("failed", False, None)
    assert outcome.error is not None
    assert (outcome.error["type"], outcome.error["message"]) == ("ValueError", "no stock")
    traceback = outcome.error["traceback"]
    assert traceback.startswith("Traceback (most recent call last):")
    assert "jobs_sample.py" in traceback
    assert "in helper_that_raises" in traceback
    assert traceback.rstrip().endswith("ValueError: no stock")
    assert "child.py" not in traceback  # the worker's own frames are left out

    outcome = await executor.execute(make_task("async_fails"), MemoryIO())
    assert outcome.error is not None
    assert (outcome.error["type"], outcome.error["message"]) == ("RuntimeError", "async boom")
    assert "in async_fails" in outcome.error["traceback"]


@module_loop
@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        (
            "tests.no_such_module:fn",
            "cannot import 'tests.no_such_module:fn': No module named 'tests.no_such_module'",
        ),
        (
            "tests.jobs_sample:missing",
            "cannot import 'tests.jobs_sample:missing': "
            "module 'tests.jobs_sample' has no attribute 'missing'",
        ),
        (
            "tests.jobs_sample:not_a_function",
            "cannot import 'tests.jobs_sample:not_a_function': 42 is not a function",
        ),
    ],
)
async def test_import_errors_deactivate(
    executor: PythonExecutor, reference: str, reason: str
) -> None:
    outcome = await executor.execute(make_task(reference), MemoryIO())
    assert (outcome.status, outcome.permanent, outcome.deactivate) == ("failed", True, reason)
    assert outcome.error is not None


@module_loop
async def test_logs_from_ctx_log_logging_and_print(executor: PythonExecutor) -> None:
    io = MemoryIO()
    outcome = await executor.execute(make_task("logs", {"who": "Ada"}), io)
    assert outcome.status == "succeeded"
    lines = io.lines
    assert lines[:5] == [
        ("INFO", "hello Ada"),
        ("WARNING", "library warning"),
        ("INFO", "printed line"),
        ("INFO", "partial line"),
        ("WARNING", "to stderr"),
    ]
    level, message = lines[5]
    assert level == "ERROR"
    assert message.startswith("caught\nTraceback (most recent call last):")
    assert "KeyError: 'missing'" in message
    assert lines[6:] == [("INFO", "no newline at the end")]
    assert not any("not shown" in message for _, message in lines)


@module_loop
async def test_progress_is_throttled_but_the_last_value_arrives(
    executor: PythonExecutor,
) -> None:
    io = CountingIO()
    outcome = await executor.execute(make_task("progress", {"total": 2000}), io)
    assert outcome.status == "succeeded"
    assert io.progress_value == (2000.0, 2000.0)
    assert 1 <= io.progress_calls <= 5


@module_loop
async def test_checkpoints_land_in_the_outcome_and_io(executor: PythonExecutor) -> None:
    io = MemoryIO()
    outcome = await executor.execute(make_task("checkpoints"), io)
    assert outcome.status == "succeeded"
    assert outcome.state == io.state == {"step": 2, "items": [1, 2]}

    io = MemoryIO()
    outcome = await executor.execute(make_task("checkpoints", {"fail": True}), io)
    assert outcome.status == "failed"
    assert outcome.state == {"step": 2, "items": [1, 2]}

    io = MemoryIO()
    outcome = await executor.execute(make_task("bad_checkpoint"), io)
    assert outcome.status == "succeeded"
    assert io.lines[0][1].startswith("TypeError: checkpoint state must be JSON-serialisable")
    assert outcome.state is None


@module_loop
async def test_graceful_stop_ends_as_stopped_with_the_checkpoint(
    executor: PythonExecutor,
) -> None:
    io = MemoryIO()
    running = asyncio.create_task(executor.execute(make_task("stoppable"), io))
    await wait_for_line(io, "started at 0")
    io.stop_event.set()
    outcome = await asyncio.wait_for(running, 5)
    assert outcome.status == "stopped"
    assert isinstance(outcome.state, int)
    assert outcome.state == io.state
    assert io.lines[-1] == ("INFO", f"stopping at {outcome.state}")


@module_loop
async def test_resume_sees_the_state(executor: PythonExecutor) -> None:
    io = MemoryIO()
    outcome = await executor.execute(make_task("echo", state={"page": 4}), io)
    assert "state={'page': 4}" in io.lines[0][1]
    assert outcome.state == {"page": 4}  # no new checkpoint: the one it started from

    io = MemoryIO()
    io.stop_event.set()  # asked before it even started
    outcome = await executor.execute(make_task("stoppable", state=40), io)
    assert (outcome.status, outcome.state) == ("stopped", 40)
    assert io.lines[0] == ("INFO", "started at 40")


@module_loop
async def test_a_stop_flag_does_not_leak_into_the_next_run(executor: PythonExecutor) -> None:
    for _ in range(3):  # both children have seen a stop by now
        io = MemoryIO()
        io.stop_event.set()
        await executor.execute(make_task("stoppable"), io)
    outcome = await executor.execute(make_task("returns", {"value": "OK"}), MemoryIO())
    assert outcome.status == "succeeded"


@module_loop
async def test_enqueue_round_trip(executor: PythonExecutor) -> None:
    io = CountingIO()
    outcome = await executor.execute(make_task("enqueues"), io)
    assert outcome.status == "succeeded"
    assert io.children == [
        ("send_email", {"to": "owner"}, False),
        ("custom-name", None, True),
        ("plain_target", None, False),
    ]
    assert io.lines == [
        ("INFO", "children [1, 2, 3]"),
        ("INFO", "LookupError: job 'no_such_job' not found"),
    ]


@module_loop
async def test_two_runs_in_parallel(executor: PythonExecutor) -> None:
    ios = [MemoryIO(), MemoryIO()]
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(executor.execute(make_task("sleeps", {"seconds": 0.5}), io) for io in ios)
    )
    elapsed = time.monotonic() - started
    assert [o.status for o in outcomes] == ["succeeded", "succeeded"]
    spans = []
    for io in ios:
        match = re.fullmatch(r"slept ([\d.]+) ([\d.]+)", io.lines[0][1])
        assert match is not None
        spans.append((float(match[1]), float(match[2])))
    (start_a, end_a), (start_b, end_b) = spans
    # the two sleeps overlapped
    assert start_a < end_b
    assert start_b < end_a
    assert elapsed < 1.0  # one after the other would take at least 1 s


@module_loop
async def test_cancel_kills_a_busy_child_and_the_pool_recovers(single: PythonExecutor) -> None:
    assert single.pool is not None
    io = MemoryIO()
    running = asyncio.create_task(single.execute(make_task("spin"), io))
    await wait_for_line(io, "spinning")
    [child] = single.pool.children
    started = time.monotonic()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    exitcode = await asyncio.wait_for(asyncio.shield(child.exited), 2)
    assert exitcode == -9
    assert time.monotonic() - started < 2

    outcome = await asyncio.wait_for(single.execute(make_task("echo"), MemoryIO()), 10)
    assert outcome.status == "succeeded"
    assert [c.pid for c in single.pool.children] != [child.pid]


@module_loop
async def test_a_child_that_dies_fails_the_run_and_is_replaced(single: PythonExecutor) -> None:
    io = MemoryIO()
    outcome = await asyncio.wait_for(single.execute(make_task("exits"), io), 10)
    assert outcome.status == "failed"
    assert outcome.permanent is False
    assert outcome.error is not None
    assert outcome.error["type"] == "WorkerProcessDied"
    assert "exit code 3" in outcome.error["message"]

    outcome = await asyncio.wait_for(single.execute(make_task("echo"), MemoryIO()), 10)
    assert outcome.status == "succeeded"


@module_loop
async def test_waiting_runs_are_served_in_order(single: PythonExecutor) -> None:
    order: list[int] = []

    async def run(i: int) -> None:
        await single.execute(make_task("returns", {"value": "OK"}), MemoryIO())
        order.append(i)

    tasks = [asyncio.create_task(run(i)) for i in range(4)]
    tasks[1].cancel()  # a cancelled waiter gives up its place
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 2, 3]


@module_loop
async def test_execute_after_close_fails_cleanly() -> None:
    ex = PythonExecutor(processes=1, sys_path=[ROOT])
    await ex.close()
    outcome = await ex.execute(make_task("echo"), MemoryIO())
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error["type"] == "ExecutorClosed"


@module_loop
async def test_invalid_config_fails_at_execute_without_starting(executor: PythonExecutor) -> None:
    bad = Job(id=2, app="shop", name="bad", kind=JobKind.PYTHON, config={"function": "nope"})
    io = MemoryIO()
    for _ in range(2):  # the second time through the validation cache's path too
        outcome = await executor.execute(Task(run_id=1, job=bad, params={}), io)
        assert (outcome.status, outcome.permanent) == ("failed", True)
        assert outcome.deactivate is not None
        assert outcome.deactivate.startswith("invalid config:")
    assert io.started_count == 0


@module_loop
async def test_execute_reports_the_start_once(executor: PythonExecutor) -> None:
    assert PythonExecutor.reports_start is True
    for _ in range(2):
        io = MemoryIO()
        outcome = await executor.execute(make_task("returns", {"value": "OK"}), io)
        assert outcome.status == "succeeded"
        assert io.started_count == 1


class StartsIO(MemoryIO):
    def __init__(self, name: str, starts: list[str]) -> None:
        super().__init__()
        self.name, self.starts = name, starts
        self.began = asyncio.Event()

    def started(self) -> None:
        super().started()
        self.starts.append(self.name)
        self.began.set()


@module_loop
async def test_runs_waiting_for_a_process_go_in_task_order(single: PythonExecutor) -> None:
    starts: list[str] = []
    blocker_io = StartsIO("blocker", starts)
    blocker = asyncio.create_task(single.execute(make_task("sleeps", {"seconds": 0.3}), blocker_io))
    await asyncio.wait_for(blocker_io.began.wait(), 10)
    runs = []
    # "late" is queued behind the blocker at once (pipelining); the others wait in order.
    for name, order in (("late", (9,)), ("c", (3,)), ("a", (1,)), ("b", (2,))):
        task = make_task("returns", {"value": "OK"})
        task.order = order
        runs.append(asyncio.create_task(single.execute(task, StartsIO(name, starts))))
        await asyncio.sleep(0)
    await asyncio.gather(blocker, *runs)
    assert starts == ["blocker", "late", "a", "b", "c"]


async def test_a_reload_while_the_processes_start_loads_the_new_code(tmp_path: Path) -> None:
    """The processes start in the background (the worker claims python runs once they are up);
    a reload meanwhile may come after they imported the code: it restarts them once up."""
    gate, importing = tmp_path / "open", tmp_path / "importing"
    code = tmp_path / "changing.py"
    code.write_text(
        "import pathlib, time\n"
        "VERSION = 'old'\n"
        f"pathlib.Path({str(importing)!r}).touch()\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n"
        "    time.sleep(0.01)\n"
        "def version(ctx):\n"
        "    ctx.log.info('version %s', VERSION)\n"
    )
    executor = PythonExecutor(processes=1, imports=["changing"], sys_path=[str(tmp_path)])
    starting = asyncio.create_task(executor.start())
    try:
        deadline = time.monotonic() + 30
        while not importing.exists():  # the process has read the old code
            assert time.monotonic() < deadline, "the process never began importing"
            await asyncio.sleep(0.01)
        # Another size: a bytecode cache written for the old code must not pass for the new.
        code.write_text(code.read_text().replace("'old'", "'new, reloaded'"))
        reloading = asyncio.create_task(executor.recycle())
        await asyncio.sleep(0.05)  # the reload waits for the start
        gate.touch()
        await asyncio.wait_for(asyncio.gather(starting, reloading), timeout=30)
        io = MemoryIO()
        outcome = await executor.execute(make_task("changing:version"), io)
        assert outcome.status == "succeeded"
        assert ("INFO", "version new, reloaded") in io.lines
    finally:
        await executor.close()
