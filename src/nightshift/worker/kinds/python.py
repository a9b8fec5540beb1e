"""The `python` kind: a user function, found by 'module:qualname', run in a child process.

Validation never imports user code (the API process may not have it); a worker's child process
imports it when a run executes, and an import error then deactivates the job.

The process pool is the queue of the runs that wait for a process: `execute` passes the run's
`Task.order` (smaller first) and the pool calls `io.started()` when the run gets a process
(`reports_start`), which is when its timeout should start counting.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import keyword
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nightshift.domain.models import JSON, JobKind
from nightshift.domain.signals import Signal
from nightshift.errors import InvalidInput
from nightshift.worker.executor import Outcome, RunIO, Task, Withdrawn, error_info
from nightshift.worker.pool import ProcessPool

_SCALARS = (str, int, float, bool, type(None))
_FUNCTION_HINT = "must be 'module:function', e.g. 'myapp.jobs:daily_report'"


class PythonConfig(BaseModel):
    """A python job's config."""

    model_config = ConfigDict(extra="forbid")

    function: str = Field(description="'module:qualname' of the job function")
    params: dict[str, Any] = Field(
        default_factory=dict, description="default params, overridden by a run's own params"
    )


def _is_dotted_name(text: str) -> bool:
    parts = text.split(".")
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)


def parse_reference(reference: Any) -> tuple[str, str]:
    """Split 'module:qualname', or raise InvalidInput naming `config.function`."""
    if not isinstance(reference, str) or not reference.strip():
        raise InvalidInput(f"is required and {_FUNCTION_HINT}", field="config.function")
    split = _split_reference(reference)
    if split is None:
        raise InvalidInput(f"{_FUNCTION_HINT}, got {reference!r}", field="config.function")
    return split


# A bulk create names the same few functions thousands of times.
@functools.lru_cache(maxsize=4096)
def _split_reference(reference: str) -> tuple[str, str] | None:
    module, sep, qualname = reference.strip().partition(":")
    if not sep or not _is_dotted_name(module) or not _is_dotted_name(qualname):
        return None
    return module, qualname


class PythonExecutor:
    kind = JobKind.PYTHON
    reports_start = True  # io.started() is called once the run has a process
    starts_on_time = True  # a run handed over before its time starts at it (Task.start_at)

    def __init__(
        self,
        processes: int = 2,
        imports: Sequence[str] = (),
        sys_path: Sequence[str] | None = None,
        *,
        log_level: str | int = "INFO",
    ) -> None:
        """`processes` child processes; each imports `imports` (the service's `--import`
        modules) when it starts, after putting `sys_path` in front of its module path."""
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.processes = processes
        self.imports = list(imports)
        self.sys_path = list(sys_path or [])
        self.log_level = log_level
        self._pool: ProcessPool | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        #: Validated configs without params, by function: validation (pydantic) is ~10 us, a
        #: noticeable part of a no-op run's cost.
        self._validated: dict[str, JSON] = {}

    @property
    def pool(self) -> ProcessPool | None:
        return self._pool

    @property
    def processes_up(self) -> int:
        """Processes ready for runs: 0 while the pool starts, fewer while one is replaced."""
        return 0 if self._pool is None else self._pool.up

    def validate(self, config: JSON) -> JSON:
        if not isinstance(config, dict):
            raise InvalidInput(
                "must be an object with 'function': 'module:function'", field="config"
            )
        for key in config:
            if key not in PythonConfig.model_fields:
                raise InvalidInput(
                    "unknown field (a python job's config has 'function' and 'params')",
                    field=f"config.{key}",
                )
        module, qualname = parse_reference(config.get("function"))
        params = config.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidInput("must be an object", field="config.params")
        if not all(isinstance(key, str) for key in params):
            raise InvalidInput("its keys must be strings", field="config.params")
        # What PythonConfig(...).model_dump() gives (a copy, nested values too), without its
        # cost: a fifth of a bulk create's validation. The model stays the documentation.
        copied = {k: v if isinstance(v, _SCALARS) else copy.deepcopy(v) for k, v in params.items()}
        return {"function": f"{module}:{qualname}", "params": copied}

    async def start(self) -> None:
        async with self._lock:
            if self._pool is not None:
                return
            self._closed = False
            pool = ProcessPool(
                self.processes, self.imports, self.sys_path, log_level=self.log_level
            )
            await pool.start()
            self._pool = pool

    async def recycle(self) -> None:
        """Restart the pool's child processes (a reload), so that changed code loads; a child
        busy with a run finishes it first. A pool still starting is restarted once up: its
        children may have imported the code before it changed."""
        async with self._lock:
            pool = self._pool
        if pool is not None:
            await pool.recycle()

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _config(self, config: JSON) -> JSON:
        function = config.get("function") if isinstance(config, dict) else None
        plain = isinstance(function, str) and (
            len(config) == 1 or (len(config) == 2 and config.get("params") == {})
        )
        if plain and (cached := self._validated.get(function)) is not None:
            return cached
        validated = self.validate(config)
        if plain:
            if len(self._validated) >= 1024:
                self._validated.clear()
            self._validated[function] = validated
        return validated

    async def execute(self, task: Task, io: RunIO) -> Outcome:
        try:
            config = self._config(task.job.config)
        except InvalidInput as exc:
            return Outcome(
                status="failed",
                error=error_info(exc, with_traceback=False),
                permanent=True,
                deactivate=f"invalid config: {exc}",
                state=task.state,
            )
        if self._pool is None and not self._closed:
            try:
                await self.start()  # started on first use when nobody called start()
            except Exception as exc:
                return Outcome(status="failed", error=error_info(exc), state=task.state)
        if self._pool is None:
            return Outcome(
                status="failed",
                error={
                    "type": "ExecutorClosed",
                    "message": "the python executor is closed",
                    "traceback": None,
                },
                state=task.state,
            )
        pool = self._pool
        payload = {
            "function": config["function"],
            "params": {**config["params"], **(task.params or {})},
            "app": task.job.app,
            "run_id": task.run_id,
            "job": task.job.name,
            "attempt": task.attempt,
            "state": task.state,
        }
        try:
            outcome = await pool.run(
                payload,
                io,
                order=task.order,
                start_at=task.start_at,
                withdraw_after=task.withdraw_after,
            )
        except Withdrawn:
            raise  # it never ran: the worker gives it back
        except Exception as exc:  # the pool's own failure (closed, cannot start a process)
            return Outcome(status="failed", error=error_info(exc), state=task.state)
        signal = outcome.get("signal")
        return Outcome(
            status=outcome["status"],
            result=outcome.get("result"),
            error=outcome.get("error"),
            permanent=bool(outcome.get("permanent", False)),
            signal=Signal(signal) if signal else None,
            deactivate=outcome.get("deactivate"),
            state=outcome.get("state"),
            took=outcome.get("took"),
        )
