"""Time, injected: every scheduler and worker decision reads a Clock, never the system directly."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time as an aware UTC datetime."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; for measuring spans."""

    async def sleep(self, seconds: float) -> None:
        """Wait for `seconds` of this clock's time."""

    def wall(self, at: datetime) -> float:
        """The `time.time()` at which this clock reads `at`: what another process waits for."""

    def from_wall(self, moment: float) -> datetime:
        """What this clock read at `time.time()` `moment` (another process's report)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def wall(self, at: datetime) -> float:
        # Exact, not now + a delay: runs due together get one time, however long it took to
        # hand them over (bench/PROFILE.md, session 16).
        return at.timestamp()

    def from_wall(self, moment: float) -> datetime:
        return datetime.fromtimestamp(moment, UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told; `sleep` returns once time has been advanced past it."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 0.0
        self._changed = asyncio.Event() if _has_loop() else None
        #: Coroutines waiting in `sleep`: a test moves the clock once the code under test sleeps.
        self.sleeping = 0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def wall(self, at: datetime) -> float:
        return time.time() + (at - self._now).total_seconds()

    def from_wall(self, moment: float) -> datetime:
        return self._now + timedelta(seconds=moment - time.time())

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self.advance((when - self._now).total_seconds())

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()
        return self._now

    async def sleep(self, seconds: float) -> None:
        deadline = self._mono + seconds
        self.sleeping += 1
        try:
            while self._mono < deadline:
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()
        finally:
            self.sleeping -= 1


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def utc(value: datetime) -> datetime:
    """Normalise an aware datetime to UTC; refuse naive ones, which are ambiguous."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: a timezone is required")
    return value.astimezone(UTC)
