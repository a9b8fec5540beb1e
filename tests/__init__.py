"""Nightshift's test suite (a package, so that `tests.jobs_sample` is importable)."""
