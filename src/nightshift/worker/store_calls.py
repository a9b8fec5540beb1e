"""Where the worker's store calls run: on threads of the service process (`ThreadCalls`) or in
a process of their own (`store_process.StoreProcess`).

Calls go by lane. "claims" carries claims and the rest of the worker's scheduling questions;
"records" carries outcomes, heartbeats and releases. On PostgreSQL the two lanes run side by
side, so that the server works on one lane's statements while Python encodes and decodes the
other's (+20 % drain, bench/PROFILE.md). On SQLite both are one: writers queue anyway.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal, Protocol

from nightshift.store.base import Store

Lane = Literal["claims", "records"]
LANES: tuple[Lane, ...] = ("claims", "records")


class StoreCalls(Protocol):
    """Runs `Store` methods by name for the worker, off its event loop."""

    #: The calls' Python runs in another process, beside the worker's own.
    separate_process: bool

    async def start(self) -> None: ...

    async def call(self, lane: Lane, name: str, *args: Any) -> Any: ...

    async def close(self) -> None: ...


def separate_lanes(dialect: str) -> bool:
    """Whether the two lanes run side by side (see the module's docstring)."""
    return dialect == "postgresql"


class ThreadCalls:
    """The calls on one thread per lane of this process."""

    separate_process = False

    def __init__(self, store: Store) -> None:
        self.store = store
        claims = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightshift-store")
        records = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightshift-record")
            if separate_lanes(getattr(store, "dialect", ""))
            else claims
        )
        self._lanes = {"claims": claims, "records": records}

    async def start(self) -> None:
        pass

    async def call(self, lane: Lane, name: str, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._lanes[lane], partial(getattr(self.store, name), *args)
        )

    async def close(self) -> None:
        for executor in set(self._lanes.values()):
            executor.shutdown(wait=False)
