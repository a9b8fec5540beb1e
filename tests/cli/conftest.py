"""Fixtures for CLI tests: a fake API on loopback and a runner of the real command tree."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner

from nightshift.cli import app
from tests.cli.fake_api import FakeApi


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    api = FakeApi()
    api.start()
    yield api
    api.stop()


@pytest.fixture
def cli(fake: FakeApi):  # type: ignore[no-untyped-def]
    """Run `nightshift ARGS…` in-process against the fake API, with a token in the env."""

    def run(*args: str, input: str | None = None, **env: Any) -> Outcome:
        environ = {"NIGHTSHIFT_URL": fake.url, "NIGHTSHIFT_TOKEN": "s3cret", "COLUMNS": "250"}
        environ.update(env)
        result = CliRunner().invoke(app, list(args), input=input, env=environ)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Outcome(result.exit_code, result.stdout, result.stderr)

    return run
