"""Clocks: the time other processes wait for (`wall`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from nightshift.clock import FakeClock, SystemClock


def test_the_system_clock_gives_one_wall_time_per_instant_however_late_it_is_asked() -> None:
    clock = SystemClock()
    instant = clock.now() + timedelta(seconds=1)
    first = clock.wall(instant)
    time.sleep(0.01)  # a handover that took a while
    assert clock.wall(instant) == first == instant.timestamp()


def test_a_fake_clock_maps_its_instants_onto_the_wall_clock_from_now() -> None:
    clock = FakeClock(datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC))
    before = time.time()
    at = clock.wall(clock.now() + timedelta(seconds=2))
    assert before + 2 <= at <= time.time() + 2


def test_a_moment_another_process_reported_reads_back_exactly_on_the_system_clock() -> None:
    clock = SystemClock()
    began = time.time() - 0.25  # a child's report, read a while later
    assert abs(clock.from_wall(began).timestamp() - began) <= 1e-6  # datetime's resolution
    instant = clock.now()
    assert clock.from_wall(clock.wall(instant)) == instant


def test_a_fake_clock_maps_a_wall_moment_back_onto_its_own_time() -> None:
    clock = FakeClock(datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC))
    back = clock.from_wall(time.time() - 2)
    assert timedelta(seconds=-2.1) < back - clock.now() <= timedelta(seconds=-2)
