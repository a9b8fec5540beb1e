"""Schema migrations with Alembic, run programmatically at start."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, exc, text

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
#: The newest revision (a test keeps it equal to Alembic's head): a database already there is
#: recognised with one query, without loading Alembic and its scripts (a fifth of start-up).
HEAD = "0009"
VERSION_TABLE = "ns_alembic_version"  # env.py gives it to Alembic
# Any constant works: it only has to be the same for every Nightshift process on one database.
_LOCK_KEY = 0x6E73_6D69  # "nsmi"


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade to `revision`. On PostgreSQL an advisory lock makes processes that start together
    migrate one after the other; SQLite's write lock does the same for it."""
    if revision == "head" and current_revision(engine) == HEAD:
        return
    from alembic import command

    cfg = alembic_config()
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                conn.commit()


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision; None before the first migration."""
    try:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    except exc.DBAPIError:  # no table yet
        return None
