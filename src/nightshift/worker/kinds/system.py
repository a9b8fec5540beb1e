"""The internal `system` kind: Nightshift's own jobs (nightshift.system_jobs).

It runs in the worker's event loop, its task's store calls in a thread. No user may save a job of
this kind: `validate` refuses every config, and system jobs are registered without it.
"""

from __future__ import annotations

import asyncio

from nightshift.domain.models import JSON, JobKind
from nightshift.errors import InvalidInput
from nightshift.system_jobs import SystemTasks
from nightshift.worker.executor import Outcome, RunIO, Task, error_info


class SystemExecutor:
    kind = JobKind.SYSTEM
    reports_start = False

    def __init__(self, tasks: SystemTasks) -> None:
        self.tasks = tasks

    def validate(self, config: JSON) -> JSON:
        raise InvalidInput("kind 'system' is reserved for Nightshift's own jobs", field="kind")

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def execute(self, task: Task, io: RunIO) -> Outcome:
        name = str(task.job.config.get("task"))
        try:
            result = await asyncio.to_thread(self.tasks.run, name)
        except Exception as exc:
            io.log("ERROR", f"system task {name} failed: {exc}")
            return Outcome(status="failed", error=error_info(exc))
        io.log("INFO", f"{name}: {result}")
        return Outcome(status="succeeded", result=result)
