"""The `Context` a python job receives: its run's params and its side channel to the worker.

In a worker, the context talks to the parent process through a backend (see `worker/child.py`).
Built without a backend, it records what the job does in memory, so a job function can be called
directly in a user's own tests: `daily_report(Context(params={"day": "2026-01-01"}))`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from nightshift.declare import JOB_ATTRIBUTE, DeclaredJob


class ContextBackend(Protocol):
    def progress(self, done: float, total: float | None) -> None: ...

    def checkpoint(self, state: Any) -> None: ...

    def enqueue(self, job: str, params: dict[str, Any] | None, low_priority: bool) -> int: ...

    def should_stop(self) -> bool: ...


@dataclass
class LocalBackend:
    """A backend that keeps everything in memory (the default outside a worker)."""

    progress_value: tuple[float, float | None] | None = None
    checkpoints: list[Any] = field(default_factory=list)
    enqueued: list[tuple[str, dict[str, Any] | None, bool]] = field(default_factory=list)
    stop: bool = False

    def progress(self, done: float, total: float | None) -> None:
        self.progress_value = (done, total)

    def checkpoint(self, state: Any) -> None:
        self.checkpoints.append(state)

    def enqueue(self, job: str, params: dict[str, Any] | None, low_priority: bool) -> int:
        self.enqueued.append((job, params, low_priority))
        return len(self.enqueued)

    def should_stop(self) -> bool:
        return self.stop


class Context:
    """What a python job function receives as its one argument."""

    def __init__(
        self,
        *,
        params: dict[str, Any] | None = None,
        app: str = "default",
        run_id: int = 0,
        job: str = "job",
        attempt: int = 1,
        state: Any = None,
        backend: ContextBackend | None = None,
    ) -> None:
        self.params: dict[str, Any] = dict(params or {})
        self.app = app
        self.run_id = run_id
        self.job = job
        self.attempt = attempt
        self.log: logging.Logger = logging.getLogger(f"nightshift.job.{job}")
        self._state = state
        self._backend: ContextBackend = backend if backend is not None else LocalBackend()

    def __repr__(self) -> str:
        return f"<Context app={self.app!r} job={self.job!r} run_id={self.run_id}>"

    @property
    def state(self) -> Any:
        """The last checkpoint (saved by this attempt or an earlier one), or None."""
        return self._state

    def progress(self, done: float, total: float | None = None) -> None:
        """Report progress: `done` out of `total`, or `done` as a percentage without `total`."""
        done = _number(done, "done")
        total = None if total is None else _number(total, "total")
        self._backend.progress(done, total)

    def checkpoint(self, state: Any) -> None:
        """Save JSON-serialisable state that a resumed or retried attempt finds in `ctx.state`."""
        state = _json_copy(state, "checkpoint state")
        self._backend.checkpoint(state)
        self._state = state

    def should_stop(self) -> bool:
        """Whether a graceful stop was asked for: checkpoint and return soon."""
        return self._backend.should_stop()

    def enqueue(
        self,
        job_name_or_function: str | Any,
        params: dict[str, Any] | None = None,
        low_priority: bool = False,
    ) -> int:
        """Create a child run of a job of this app; returns its run id.

        A function declared with `@nightshift.job` stands for its declared name, any other
        function for its `__name__`. Raises LookupError when the run cannot be created (no such
        job, for one).
        """
        name = job_name(job_name_or_function)
        if params is not None:
            if not isinstance(params, dict):
                raise TypeError(f"params must be a dict, got {type(params).__name__}")
            params = _json_copy(params, "params")
        return self._backend.enqueue(name, params, bool(low_priority))


def job_name(target: str | Any) -> str:
    """The job name a string, a declared function or a plain function stands for."""
    if isinstance(target, str):
        if not target.strip():
            raise ValueError("the job name is empty")
        return target.strip()
    declared = getattr(target, JOB_ATTRIBUTE, None)
    if isinstance(declared, DeclaredJob):
        return declared.name
    name = getattr(target, "__name__", None)
    if callable(target) and isinstance(name, str):
        return name
    raise TypeError(f"expected a job name or a job function, got {target!r}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"progress {what} must be a number, got {value!r}")
    return float(value)


def _json_copy(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from None
