"""Loops that retry through a database outage log it once, not once per attempt."""

from __future__ import annotations

import logging


class FailureStreak:
    """The first failure of a streak is logged with its traceback, the next ones in one line
    each, and the first success after them once."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self.count = 0

    def failed(self, exc: BaseException) -> None:
        self.count += 1
        if self.count == 1:
            self._log.error("%s failed; retrying", self._what, exc_info=exc)
        else:
            self._log.warning("%s failed again (%d): %s", self._what, self.count, one_line(exc))

    def succeeded(self) -> None:
        if self.count:
            self._log.info("%s works again after %d failure(s)", self._what, self.count)
            self.count = 0


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
