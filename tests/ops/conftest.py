"""Run-control tests use the real service of the API tests: `serve(roles=..., **settings)`."""

from tests.api.conftest import admin, api, serve  # noqa: F401
