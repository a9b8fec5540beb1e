"""Python jobs the benchmarks run (imported by the worker's spawned child processes)."""

from __future__ import annotations


def noop(ctx: object) -> None:
    """The no-op job of the throughput and lateness benchmarks."""
    return None
