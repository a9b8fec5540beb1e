"""Jobs declared outside the API: `@nightshift.job` in imported modules and `[[jobs]]` tables in
nightshift.toml. Both are synced at start and on reload, matched by app and name.

A `[[jobs]]` table takes the job fields (as `POST /api/v1/jobs` does); a python job may give
`function = "module:function"` (and `params`) instead of `kind` and `config`:

    [[jobs]]
    name = "ping"
    app = "shop"
    kind = "http"
    schedule = "*/5 * * * *"
    config = { url = "https://shop.example.com/ping" }

    [[jobs]]
    name = "report"
    function = "myjobs:daily_report"
    schedule = "0 8 * * *"
    params = { day = "today" }
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from nightshift.declare import DeclaredJob, find_declared
from nightshift.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class TomlJob:
    """One `[[jobs]]` table, shaped like a `DeclaredJob` so the service syncs both alike."""

    name: str
    app: str
    kind: str
    fields: dict[str, Any] = field(hash=False)
    config: dict[str, Any] = field(hash=False)
    origin: str = ""  # "nightshift.toml [[jobs]] #2", for error messages


Declaration = DeclaredJob | TomlJob


def read_toml_jobs(path: Path) -> list[TomlJob] | None:
    """The `[[jobs]]` tables of a nightshift.toml, or None when there is no such file.

    Raises InvalidInput naming the table when one is not a job declaration; the job fields
    themselves are validated when the service syncs them.
    """
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid TOML: {exc}", field=None) from None
    tables = data.get("jobs", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InvalidInput(f"{path}: 'jobs' must be [[jobs]] tables", field="jobs")
    return [_toml_job(table, f"{path.name} [[jobs]] #{n}") for n, table in enumerate(tables, 1)]


def _toml_job(table: dict[str, Any], origin: str) -> TomlJob:
    fields = dict(table)
    name = fields.pop("name", None)
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"{origin}: every declared job needs a name", field="name")
    app = fields.pop("app", "default")
    if not isinstance(app, str) or not app.strip():
        raise InvalidInput(f"{origin}: app must be a non-empty string", field="app")
    function = fields.pop("function", None)
    if function is not None:
        kind = fields.pop("kind", "python")
        if kind != "python" or "config" in fields:
            raise InvalidInput(
                f"{origin}: 'function' declares a python job; give kind and config instead",
                field="function",
            )
        config = {"function": function, "params": fields.pop("params", None) or {}}
    else:
        kind = fields.pop("kind", None)
        if not isinstance(kind, str):
            raise InvalidInput(f"{origin}: give 'kind' and 'config', or 'function'", field="kind")
        config = fields.pop("config", None) or {}
    return TomlJob(name.strip(), app.strip(), kind, fields, config, origin)


def collect(modules: Iterable[ModuleType], toml_path: Path) -> list[Declaration] | None:
    """Every declaration in `modules` and the toml file, or None when there is no source of
    declarations at all (no modules, no toml file): a process started without them must not
    disable the jobs that other processes declare."""
    modules = list(modules)
    toml_jobs = read_toml_jobs(toml_path)
    if not modules and toml_jobs is None:
        return None
    found: list[Declaration] = [d for m in modules for d in find_declared(m)]
    return [*found, *(toml_jobs or [])]


def reload_modules(modules: Iterable[ModuleType]) -> list[ModuleType]:
    """Re-execute each module's code (importlib.reload), so new declarations are seen.

    A module that no longer imports raises InvalidInput naming it (field "imports"); the
    modules before it are reloaded already, but no declaration has been synced yet."""
    reloaded = []
    for module in modules:
        try:
            reloaded.append(importlib.reload(module))
        except Exception as exc:
            message = f"{module.__name__} does not import: {type(exc).__name__}: {exc}"
            raise InvalidInput(message, field="imports") from None
    return reloaded


def describe(item: Any) -> str:
    """Where a declaration comes from, for error messages."""
    origin = getattr(item, "origin", "") or getattr(item, "function", "")
    return f"job {item.app}/{item.name} declared in {origin}"


@dataclass(slots=True)
class ReloadReport:
    """What a reload did: declared jobs synced, STOP holds released, modules re-imported."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    released: int = 0
    modules: list[str] = field(default_factory=list)
