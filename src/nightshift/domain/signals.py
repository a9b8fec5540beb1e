"""What a python job's return value says about its future (seed 004's job returns)."""

from __future__ import annotations

from enum import StrEnum


class Signal(StrEnum):
    OK = "OK"  # keep recurring on the schedule
    SLEEP = "SLEEP"  # run again no sooner than 24 h after this run
    STOP = "STOP"  # stay enabled, but do not fire again until the service reloads
    EXIT = "EXIT"  # deactivate the job until someone re-enables it


OK = Signal.OK
SLEEP = Signal.SLEEP
STOP = Signal.STOP
EXIT = Signal.EXIT

SLEEP_SECONDS = 24 * 3600
