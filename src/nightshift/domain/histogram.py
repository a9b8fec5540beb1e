"""The duration histogram behind the statistics' p95: fixed log-spaced bins.

Bin 0 holds every duration up to `BIN_BASE`; bin k ≥ 1 holds (BASE·RATIO^(k-1), BASE·RATIO^k].
The store computes the same bin in SQL (nightshift.store.sql.stats), from these constants and
the same floating-point steps, so a bin never depends on where it was counted.
"""

from __future__ import annotations

import math

BIN_BASE = 0.001  # seconds
BIN_RATIO = 2**0.25
LOG_RATIO = math.log(BIN_RATIO)


def duration_bin(seconds: float) -> int:
    if seconds <= BIN_BASE:
        return 0
    return 1 + int(math.log(seconds / BIN_BASE) / LOG_RATIO)


def bin_value(index: int) -> float:
    """A representative duration of a bin: the geometric middle of its bounds."""
    if index == 0:
        return BIN_BASE
    return BIN_BASE * BIN_RATIO ** (index - 0.5)
