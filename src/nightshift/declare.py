"""`@nightshift.job`: declare a python job next to its code.

The decorator returns the function itself, with one attribute, `__nightshift_job__`, holding a
`DeclaredJob`. There is no registry: the service finds declarations by scanning the modules it is
told to import (`find_declared`), so importing a module twice or in a test declares nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any, ClassVar, TypeVar, overload

JOB_ATTRIBUTE = "__nightshift_job__"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class DeclaredJob:
    """A job declared in code: its identity, the job fields given, and where its function lives."""

    kind: ClassVar[str] = "python"

    name: str
    app: str
    fields: dict[str, Any] = field(hash=False)  # only the arguments given, in job-JSON form
    function: str  # "module:qualname"
    config: dict[str, Any] = field(hash=False)  # the python kind's config: function + params


@overload
def job(schedule: F, /) -> F: ...


@overload
def job(
    schedule: str | None = None,
    *,
    name: str | None = None,
    app: str = "default",
    timezone: str | None = None,
    description: str = "",
    tags: Iterable[str] = (),
    overlap: str | None = None,
    retries: int | dict[str, Any] | None = None,
    timeout_s: float | None = None,
    catch_up: str | None = None,
    max_lateness_s: float | None = None,
    low_priority: bool | None = None,
    start_at: datetime | str | None = None,
    end_at: datetime | str | None = None,
    start_delay_s: float | None = None,
    jitter_s: float | None = None,
    enabled: bool = True,
    params: dict[str, Any] | None = None,
) -> Callable[[F], F]: ...


def job(
    schedule: Any = None,
    *,
    name: str | None = None,
    app: str = "default",
    timezone: str | None = None,
    description: str = "",
    tags: Iterable[str] = (),
    overlap: str | None = None,
    retries: int | dict[str, Any] | None = None,
    timeout_s: float | None = None,
    catch_up: str | None = None,
    max_lateness_s: float | None = None,
    low_priority: bool | None = None,
    start_at: datetime | str | None = None,
    end_at: datetime | str | None = None,
    start_delay_s: float | None = None,
    jitter_s: float | None = None,
    enabled: bool = True,
    params: dict[str, Any] | None = None,
) -> Any:
    """Declare the decorated function as a python job; usable as `@job` and `@job(...)`.

    The arguments are the job's fields (`retries=3` is short for `retries={"max": 3}`); `name`
    defaults to the function's name, `app` to "default". Only the arguments given (different
    from their defaults) land in `DeclaredJob.fields`; full validation happens when the service
    saves the job.
    """
    if callable(schedule) and not isinstance(schedule, str):
        return job()(schedule)  # bare @job

    if schedule is not None and not isinstance(schedule, str):
        raise TypeError(f"schedule must be a string, got {schedule!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if not isinstance(app, str) or not app.strip():
        raise TypeError(f"app must be a non-empty string, got {app!r}")
    if isinstance(tags, str):
        raise TypeError("tags must be a list of strings, not one string")
    if params is not None:
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict, got {type(params).__name__}")
        try:
            json.dumps(params, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"params must be JSON-serialisable: {exc}") from None

    fields: dict[str, Any] = {}
    given: dict[str, Any] = {
        "schedule": schedule,
        "timezone": timezone,
        "overlap": overlap,
        "timeout_s": timeout_s,
        "catch_up": catch_up,
        "max_lateness_s": max_lateness_s,
        "low_priority": low_priority,
        "start_at": start_at,
        "end_at": end_at,
        "start_delay_s": start_delay_s,
        "jitter_s": jitter_s,
    }
    fields.update({key: value for key, value in given.items() if value is not None})
    if description:
        fields["description"] = description
    tag_list = list(tags)
    if tag_list:
        fields["tags"] = tag_list
    if retries is not None:
        fields["retries"] = _retries(retries)
    if enabled is not True:
        fields["enabled"] = bool(enabled)

    def decorate(fn: F) -> F:
        function = _reference(fn)
        declared = DeclaredJob(
            name=(name or fn.__name__).strip(),
            app=app.strip(),
            fields=dict(fields),
            function=function,
            config={"function": function, "params": dict(params or {})},
        )
        try:
            setattr(fn, JOB_ATTRIBUTE, declared)
        except (AttributeError, TypeError):
            raise TypeError(f"nightshift.job cannot mark {fn!r}: it takes no attributes") from None
        return fn

    return decorate


def find_declared(module: ModuleType) -> list[DeclaredJob]:
    """The jobs declared by functions found among a module's attributes, in definition order.

    Re-exported functions count too (a package `__init__` that imports its jobs); the same
    function under two names counts once. Two different functions declaring the same app and
    name raise ValueError.
    """
    found: dict[tuple[str, str], DeclaredJob] = {}
    for value in list(vars(module).values()):
        try:
            declared = getattr(value, JOB_ATTRIBUTE, None)
        except Exception:  # lazy proxies and the like may raise anything
            continue
        if not isinstance(declared, DeclaredJob):
            continue
        key = (declared.app, declared.name)
        other = found.get(key)
        if other is None:
            found[key] = declared
        elif other.function != declared.function:
            raise ValueError(
                f"job {declared.name!r} of app {declared.app!r} is declared twice in "
                f"{module.__name__}: by {other.function} and by {declared.function}"
            )
    return list(found.values())


def _retries(retries: Any) -> dict[str, Any]:
    if isinstance(retries, bool) or not isinstance(retries, int | dict):
        raise TypeError(f"retries must be an int or a dict, got {retries!r}")
    if isinstance(retries, int):
        if retries < 0:
            raise TypeError(f"retries must be >= 0, got {retries}")
        return {"max": retries}
    return dict(retries)


def _reference(fn: Any) -> str:
    """'module:qualname' of a function a worker process can import, or TypeError."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not callable(fn) or not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"nightshift.job decorates functions, got {fn!r}")
    if "<" in qualname:  # "<locals>", "<lambda>"
        raise TypeError(
            f"nightshift.job cannot declare {module}:{qualname}: a nested function or a lambda "
            "cannot be imported by a worker process; define it at the top level of a module"
        )
    return f"{module}:{qualname}"
