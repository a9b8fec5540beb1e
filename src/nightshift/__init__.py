"""Nightshift: background jobs on schedules or on demand, with a record of every run.

The public face for job code:

    import nightshift

    @nightshift.job(schedule="every 5m", retries=3)
    def sync(ctx: nightshift.Context):
        ctx.log.info("syncing")
        return nightshift.OK
"""

from nightshift.context import Context
from nightshift.declare import job
from nightshift.domain.signals import EXIT, OK, SLEEP, STOP, Signal

__version__ = "0.1.0"

__all__ = ["EXIT", "OK", "SLEEP", "STOP", "Context", "Signal", "__version__", "job"]
