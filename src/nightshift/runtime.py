"""One process's roles wired together: store, service, scheduler, workers and the HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from nightshift import console
from nightshift.access import AccessService
from nightshift.alerts.dispatcher import AlertDispatcher, app_secret_values
from nightshift.clock import Clock, SystemClock
from nightshift.config import Settings, config_path
from nightshift.declared import ReloadReport, collect, reload_modules
from nightshift.domain.models import JobKind
from nightshift.metrics import build_metrics
from nightshift.scheduler import Scheduler
from nightshift.service import Service
from nightshift.store import SqlStore, open_store
from nightshift.store.sql.notify import JOBS, RUNS, Listener
from nightshift.system_jobs import SystemTasks
from nightshift.worker import forkserver
from nightshift.worker.kinds.python import PythonExecutor
from nightshift.worker.kinds.registry import build_executors
from nightshift.worker.store_process import store_calls
from nightshift.worker.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Callable

    import uvicorn  # the api role imports it (serve): a worker or scheduler never does

log = logging.getLogger("nightshift")

ALL_ROLES = ("api", "scheduler", "worker")


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        roles: tuple[str, ...] = ALL_ROLES,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.roles = roles
        self.clock = clock or SystemClock()
        if "worker" in roles:
            forkserver.start()  # it imports the worker's processes' code while we set up
        self.store: SqlStore = open_store(
            settings.database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        self.system_tasks = SystemTasks(self.store, self.clock, settings)
        self.executors = build_executors(settings, self.system_tasks)
        # PostgreSQL wakes the other processes' workers and schedulers by NOTIFY; SQLite cannot.
        self.listener: Listener | None = None
        if self.store.dialect == "postgresql" and settings.notify:
            self.listener = Listener(settings.listen_url or settings.database_url)
        calls = store_calls(self.store, settings) if "worker" in roles else None
        self.scheduler = Scheduler(
            self.store, self.clock, settings, notified=self._notified, calls=calls
        )
        self.worker = Worker(
            self.store,
            self.clock,
            settings,
            self.executors,
            notified=self._notified,
            calls=calls,
        )
        self.service = Service(
            self.store, self.clock, settings, self.executors, on_change=self._changed
        )
        self.access = AccessService(self.store, self.clock, settings)
        self.alerts = AlertDispatcher(
            self.store, self.clock, settings, secret_values=app_secret_values(self.access)
        )
        local = [self.worker] if "worker" in roles else []
        self.metrics = build_metrics(self.store, self.clock, settings, local)  # per process
        self.scheduler.on_fired.append(self.worker.wake)
        self.stop = asyncio.Event()
        self.server: uvicorn.Server | None = None
        self.modules: list[ModuleType] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reloading = asyncio.Lock()

    def _notified(self) -> bool:
        return self.listener is not None and self.listener.connected

    def _changed(self) -> None:
        # Service calls come from API threads too: wake the loops on their own loop's thread.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_loops)
        else:
            self._wake_loops()

    def _wake_loops(self) -> None:
        self.scheduler.wake()
        self.worker.wake()

    def import_user_modules(self) -> list[ModuleType]:
        """Import `--import` modules (from the working directory too) and sync their jobs and
        nightshift.toml's `[[jobs]]`."""
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        self.modules = [importlib.import_module(name) for name in self.settings.imports]
        self._sync_declared()
        return self.modules

    def _sync_declared(self) -> ReloadReport:
        report = ReloadReport(modules=[m.__name__ for m in self.modules])
        declared = collect(self.modules, config_path(self.settings))
        if declared is None:  # neither --import nor nightshift.toml: leave declarations alone
            return report
        synced = self.service.sync_declared(declared)
        report.created, report.updated, report.disabled = (
            synced.created,
            synced.updated,
            synced.disabled,
        )
        log.info(
            "declared jobs: %d created, %d updated, %d disabled",
            len(report.created),
            len(report.updated),
            len(report.disabled),
        )
        return report

    async def reload(self) -> ReloadReport:
        """Re-import the user's modules, re-sync declared jobs, wake STOPped jobs and restart
        the python worker processes so that changed code loads. Timers are kept."""
        async with self._reloading:

            def sync() -> ReloadReport:
                gc.unfreeze()  # the replaced modules' objects can be collected (see serve())
                try:
                    self.modules = reload_modules(self.modules)
                finally:
                    gc.collect()
                    gc.freeze()
                report = self._sync_declared()
                report.released = self.service.release_holds()
                return report

            report = await asyncio.to_thread(sync)
            python = self.executors.get(JobKind.PYTHON)
            if "worker" in self.roles and isinstance(python, PythonExecutor):
                await python.recycle()
            log.info("reloaded: %d STOPped job(s) released", report.released)
            return report

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        """Run the roles until `request_stop()`; `started` is called once they all run."""
        loop = self._loop = asyncio.get_running_loop()
        console.install()  # the console log the API shows (GET /api/v1/logs/console)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        # The API's modules load on a thread meanwhile: the steps below mostly wait for the
        # database and for the worker's processes, which leaves the interpreter free.
        api_modules = (
            asyncio.ensure_future(asyncio.to_thread(_import_api)) if "api" in self.roles else None
        )
        if "api" in self.roles:
            await asyncio.to_thread(self.access.bootstrap)  # admin token, secret key
        await asyncio.to_thread(self.import_user_modules)
        await asyncio.to_thread(self.system_tasks.register)  # pruning, recovery, roll-up
        tasks: list[asyncio.Task[None]] = []
        if self.listener is not None:
            if "worker" in self.roles:
                self.listener.subscribe(RUNS, self.worker.wake)
            if "scheduler" in self.roles:
                self.listener.subscribe(JOBS, self.scheduler.wake)
            if self.listener.channels:
                tasks.append(asyncio.create_task(self.listener.run(self.stop), name="listener"))
        if "worker" in self.roles:
            await self.worker.start()
            tasks.append(asyncio.create_task(self.worker.run(self.stop), name="worker"))
        scheduling: asyncio.Task[None] | None = None
        if "scheduler" in self.roles:
            scheduling = asyncio.create_task(self.scheduler.run(self.stop), name="scheduler")
            tasks.append(scheduling)
            tasks.append(asyncio.create_task(self.alerts.run(self.stop), name="alerts"))
        if api_modules is not None:
            create_app, api_server = await api_modules
            api_app = create_app(self.service, self.access, roles=self.roles, reload=self.reload)
            api_app.state.metrics = self.metrics
            self.server = api_server(api_app, self.settings)
            tasks.append(asyncio.create_task(self.server.serve(), name="api"))
        # What start-up built (modules, the app, the store) lives as long as the process: out
        # of the collector's sight, a full collection took 40-54 ms every ~2 s under load
        # instead, stalling the loop (bench/PROFILE.md, session 7).
        gc.freeze()
        if started is not None:
            started()
        log.info(
            "nightshift %s: %s on %s, http://%s:%s",
            "+".join(self.roles),
            self.store.dialect,
            _safe_url(self.settings.database_url),
            self.settings.host,
            self.settings.port,
        )
        await self.stop.wait()
        log.info("shutting down: runs get %.0f s to finish", self.settings.shutdown_grace_s)
        if scheduling is not None:
            # It ends with its tick under way, whose transactions may go through the worker's
            # store process: before the worker closes it.
            await asyncio.gather(scheduling, return_exceptions=True)
        if "worker" in self.roles:
            await self.worker.close()
        if self.server is not None:
            self.server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        self.store.close()
        log.info("stopped")

    def request_stop(self) -> None:
        if self.stop.is_set() and self.server is not None:
            self.server.force_exit = True  # a second Ctrl-C: do not wait any longer
        self.stop.set()


def _import_api() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Imported only with the api role: FastAPI, the routes and uvicorn are a third of the
    import time, which a worker or scheduler process on its own does not spend."""
    from nightshift.api.app import create_app
    from nightshift.api.server import api_server

    return create_app, api_server


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
