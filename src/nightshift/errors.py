"""The error tree: the type says what happened, attributes say where and whether to retry."""

from __future__ import annotations


class NightshiftError(Exception):
    """Root of every error this package raises on purpose."""

    code = "error"


class InvalidInput(NightshiftError, ValueError):
    """Input a user gave is wrong; `field` names it, the message says why."""

    code = "invalid"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def __reduce__(self) -> tuple[object, ...]:  # errors cross to and from the store process
        return type(self), (self.message, self.field)


class InvalidSchedule(InvalidInput):
    """A schedule expression or timezone that cannot be parsed."""

    code = "invalid_schedule"


class NotFound(NightshiftError, LookupError):
    """A row that does not exist (or that the caller may not see)."""

    code = "not_found"

    def __init__(self, what: str, key: object) -> None:
        super().__init__(f"{what} {key!r} not found")
        self.what = what
        self.key = key

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (self.what, self.key)


class Conflict(NightshiftError):
    """The operation does not apply to the current state (e.g. resuming a running run);
    `field` names the input at fault when there is one (`jobs[3].name` in a bulk create)."""

    code = "conflict"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (str(self), self.field)


class JobFailure(NightshiftError):
    """A job's execution failed; `permanent` says that retrying cannot help."""

    code = "job_failed"

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent

    def __reduce__(self) -> tuple[object, ...]:
        return _job_failure, (type(self), str(self), self.permanent)


class Refused(NightshiftError):
    """The database refused what was given (a value it cannot store, a broken constraint):
    trying again with the same values cannot succeed, unlike after a lost connection."""

    code = "refused"


def _job_failure(kind: type[JobFailure], message: str, permanent: bool) -> JobFailure:
    return kind(message, permanent=permanent)
