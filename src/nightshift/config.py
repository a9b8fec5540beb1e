"""Settings: one source, from NIGHTSHIFT_* variables and the same names in nightshift.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    """Every setting of the service; CLI flags override them, tests build them directly."""

    model_config = SettingsConfigDict(env_prefix="NIGHTSHIFT_", extra="ignore")

    database_url: str = "sqlite:///nightshift.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    admin_token: str | None = None
    timezone: str = "UTC"
    imports: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: nightshift.toml: settings, and `[[jobs]]` tables declaring jobs (NIGHTSHIFT_CONFIG).
    config: str = "nightshift.toml"

    # api
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    #: How long `POST /jobs/{id}/test` waits for a job without its own timeout_s.
    test_wait_s: float = Field(default=60.0, gt=0)
    #: A Fernet key (urlsafe base64, 32 bytes) encrypting secrets at rest; generated into
    #: `secret_key_file` at first start when unset.
    secret_key: str | None = None
    secret_key_file: str = "nightshift.key"

    # workers
    worker_processes: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2), ge=1)
    worker_concurrency: int = Field(default=100, ge=1)
    #: Python runs a worker claims ahead of its free processes, waiting in priority order for
    #: one: claims and completions then go in batches instead of one transaction per run.
    worker_prefetch: int = Field(default=128, ge=0)
    #: ... but only as many as the processes get through in about this long, at the recent run
    #: time: long runs are not held away from other workers and from new roots.
    worker_prefetch_window_s: float = Field(default=0.05, ge=0)
    #: Where the worker's claims and outcomes run: "process", a process of its own whose
    #: Python runs beside the service's instead of taking turns with it; "threads", threads of
    #: the service process; "auto", a process on SQLite and threads on PostgreSQL, the faster
    #: on each (worker/store_process.py, bench/PROFILE.md).
    worker_store_calls: Literal["auto", "process", "threads"] = "auto"
    lease_s: float = Field(default=30.0, gt=0)
    heartbeat_s: float = Field(default=0.5, gt=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    max_lost_attempts: int = Field(default=3, ge=1)

    # scheduler
    # Small: a big instant's first runs are claimable after one short transaction, and on
    # SQLite the worker's claims go between the batches (bench/PROFILE.md, session 7).
    scheduler_batch: int = Field(default=64, ge=1)
    scheduler_poll_s: float = Field(default=2.0, gt=0)
    #: Schedulers fire, and workers claim, up to this long before a run's time; nothing starts
    #: before it. A big instant's inserts and claims are then done when it comes, and only the
    #: starts are left (bench/PROFILE.md, session 14). A job whose previous run is still active
    #: (overlap other than `allow`) is fired at its time, so its overlap policy sees that run
    #: as it is then. 0: fire and claim at the time.
    fire_ahead_s: float = Field(default=0.5, ge=0, le=10)
    catch_up_max: int = Field(default=100, ge=1)

    # several processes on PostgreSQL
    #: LISTEN/NOTIFY wakes workers as runs become due and schedulers as jobs change.
    notify: bool = True
    #: A direct connection for LISTEN when database_url goes through a pooler in transaction
    #: mode (PgBouncer), which cannot hold a LISTEN; default: database_url.
    listen_url: str | None = None
    #: While notifications arrive, idle workers and schedulers still look every poll_s: a lost
    #: notification delays work by at most this. Without them (SQLite, notify off, listener
    #: reconnecting) workers look every second and schedulers every scheduler_poll_s.
    poll_s: float = Field(default=5.0, gt=0)

    # http jobs
    http_allow_private: bool = False
    http_allow_hosts: str = ""
    http_max_body_bytes: int = Field(default=65536, ge=0)

    # system jobs, statistics and metrics (nightshift.system_jobs, nightshift.stats, metrics)
    #: Days of run history an app keeps when its retention_days is unset.
    retention_days: int = Field(default=30, ge=1)
    #: Days of history of the system jobs' own runs (app "system" without retention_days).
    system_retention_days: int = Field(default=1, ge=1)
    prune_schedule: str = "every 1h"
    recover_schedule: str = "every 10s"
    rollup_schedule: str = "every 1m"
    #: Runs deleted per pruning transaction, and at most per app in one pruning run.
    prune_batch: int = Field(default=1000, ge=1)
    prune_max_per_run: int = Field(default=100_000, ge=1)
    #: Minutes younger than this are never rolled up: late writes (a worker's completion batch,
    #: clocks of other machines) still land in live aggregation.
    stats_lag_s: float = Field(default=120.0, ge=0)
    stats_rollup_batch_minutes: int = Field(default=1440, ge=1)
    #: A roll-up run takes further batches until it has caught up or spent this long: after an
    #: upgrade onto a long history it catches up in minutes, not a day of history a minute.
    stats_rollup_budget_s: float = Field(default=20.0, ge=0)
    #: /metrics: waiting-time and lateness histograms cover runs started in this window.
    metrics_window_s: float = Field(default=300.0, gt=0)
    metrics_sample_limit: int = Field(default=10_000, ge=1)

    # sqlite
    sqlite_synchronous: str = "NORMAL"

    # alerts
    #: Where alert links point: the API's public base URL (default http://HOST:PORT).
    public_url: str | None = None
    #: How often the alert dispatcher (in scheduler processes) scans runs and sends alerts.
    alert_poll_s: float = Field(default=5.0, gt=0)
    #: Attempts per alert delivery, with exponential backoff from alert_backoff_s (x2 each).
    alert_attempts: int = Field(default=5, ge=1)
    alert_backoff_s: float = Field(default=15.0, ge=0)
    alert_timeout_s: float = Field(default=10.0, gt=0)
    #: SMTP for e-mail alerts; e-mail alerts fail (recorded on the delivery) while unset.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "nightshift@localhost"
    smtp_starttls: bool = True

    log_level: str = "INFO"

    @field_validator("imports", mode="before")
    @classmethod
    def _split_imports(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(_TomlNightshiftSource(settings_cls, toml_path))
        return tuple(sources)


def config_path(settings: Settings | None = None) -> Path:
    """Where nightshift.toml is: the settings' `config`, else NIGHTSHIFT_CONFIG, else the
    working directory."""
    if settings is not None:
        return Path(settings.config)
    return Path(os.environ.get("NIGHTSHIFT_CONFIG", "nightshift.toml"))


class _TomlNightshiftSource(TomlConfigSettingsSource):
    """nightshift.toml accepts the variable names (NIGHTSHIFT_PORT) or plain keys (port)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls, toml_file=path)
        data: dict[str, object] = {}
        for key, value in self.toml_data.items():
            name = key.lower()
            name = name.removeprefix("nightshift_")
            data[name] = value
        self.toml_data = data
        self.toml_data.pop("jobs", None)  # [[jobs]] tables are declarations, not settings
