"""What every request handler may use: the use cases, the settings, the reload hook."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from nightshift.access import AccessService
from nightshift.config import Settings
from nightshift.declared import ReloadReport
from nightshift.service import Service

Reload = Callable[[], Awaitable[ReloadReport]]


@dataclass(slots=True)
class ApiContext:
    service: Service
    access: AccessService
    roles: tuple[str, ...] = ("api",)
    reload: Reload | None = None  # None: this process cannot reload (no runtime behind it)

    @property
    def settings(self) -> Settings:
        return self.service.settings


def get_context(request: Request) -> ApiContext:
    return request.app.state.nightshift
