"""The HTTP server of the api role: uvicorn serving the app on the runtime's event loop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn

from nightshift.config import Settings


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the runtime owns SIGINT / SIGTERM, to drain the workers before the server stops


def api_server(app: Any, settings: Settings) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="off",
    )
    return _Server(config)
