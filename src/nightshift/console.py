"""The service's console log, readable through the API (seed 000's "Log → Console").

A logging handler keeps the process's last lines in a bounded ring buffer: memory stays flat
however long the service runs, and reading it never touches the database. It sits on the root
logger, so it holds what the console shows (the levels configured there apply). One buffer per
process: `install()` is idempotent, so several runtimes in one process (tests) share it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

#: Lines kept; the oldest go first.
CAPACITY = 5000
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


@dataclass(frozen=True, slots=True)
class ConsoleLine:
    id: int  # grows by one per line: a reader can ask for what came after the last it saw
    at: datetime
    level: str
    logger: str
    message: str


class ConsoleBuffer(logging.Handler):
    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__(level=logging.NOTSET)
        self._lines: deque[ConsoleLine] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[0] is not None:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            at = datetime.fromtimestamp(record.created, UTC)
            with self._guard:
                self._lines.append(
                    ConsoleLine(next(self._ids), at, record.levelname, record.name, message)
                )
        except Exception:
            self.handleError(record)

    def lines(
        self,
        *,
        q: str | None = None,
        level: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[ConsoleLine]:
        """The newest `limit` lines matching every filter, oldest first: `q` matches the message
        or the logger's name case-insensitively, `level` is a minimum."""
        with self._guard:
            snapshot = list(self._lines)
        wanted = LEVELS.get(level.upper(), 0) if level else 0
        needle = q.lower() if q else None
        found: list[ConsoleLine] = []
        for line in reversed(snapshot):
            if len(found) >= limit:
                break
            if LEVELS.get(line.level, 0) < wanted:
                continue
            if since is not None and line.at < since:
                continue
            if until is not None and line.at >= until:
                continue
            if needle and needle not in line.message.lower() and needle not in line.logger.lower():
                continue
            found.append(line)
        found.reverse()
        return found


def installed(logger: logging.Logger | None = None) -> ConsoleBuffer | None:
    """The buffer on `logger` (the root logger by default), or None."""
    target = logger or logging.getLogger()
    return next((h for h in target.handlers if isinstance(h, ConsoleBuffer)), None)


def install(logger: logging.Logger | None = None, capacity: int = CAPACITY) -> ConsoleBuffer:
    """Attach a buffer to `logger` (the root logger by default) unless one is there already."""
    target = logger or logging.getLogger()
    found = installed(target)
    if found is None:
        found = ConsoleBuffer(capacity)
        target.addHandler(found)
    return found
