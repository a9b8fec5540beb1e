"""The kinds a service can run, built from its settings: one mapping, one place to add a kind."""

from __future__ import annotations

from nightshift.config import Settings
from nightshift.domain.models import JSON, JobKind
from nightshift.errors import InvalidInput
from nightshift.system_jobs import SystemTasks
from nightshift.worker.executor import Executor
from nightshift.worker.kinds.http import HttpExecutor
from nightshift.worker.kinds.python import PythonExecutor
from nightshift.worker.kinds.system import SystemExecutor
from nightshift.worker.netguard import AddressPolicy


def build_executors(
    settings: Settings, system: SystemTasks | None = None
) -> dict[JobKind, Executor]:
    """The kinds of `settings`; with `system` (a process that has a store) the internal kind
    that runs Nightshift's own jobs as well."""
    policy = AddressPolicy.from_strings(settings.http_allow_private, settings.http_allow_hosts)
    system_kind: dict[JobKind, Executor] = (
        {JobKind.SYSTEM: SystemExecutor(system)} if system else {}
    )
    return {
        **system_kind,
        JobKind.HTTP: HttpExecutor(
            policy,
            max_body_bytes=settings.http_max_body_bytes,
            keepalive=settings.worker_concurrency,  # one kept-alive connection per slot
        ),
        JobKind.PYTHON: PythonExecutor(
            processes=settings.worker_processes, imports=list(settings.imports)
        ),
    }


def validate_config(executors: dict[JobKind, Executor], kind: JobKind, config: JSON) -> JSON:
    executor = executors.get(kind)
    if executor is None:
        raise InvalidInput(f"kind {kind.value!r} is not available in this version", field="kind")
    return executor.validate(config)
