"""Settings for every jobrunner process, read from the environment (prefix ``JOBRUNNER_``)."""

from __future__ import annotations

import datetime as dt
import functools
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

#: Where the zero-setup defaults keep their files.
VAR_DIR = Path("var")
#: ``30s``, ``30m``, ``12h``, ``7d``, ``2w``: the short durations the retention settings take.
_SHORT_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The broker URL schemes jobrunner speaks: Redis, RabbitMQ (AMQP 0-9-1), and PostgreSQL (the jobs
#: database itself). ``worker.producer`` picks the broker for each.
BROKER_SCHEMES = ("redis", "rediss", "unix", "amqp", "amqps", "postgresql", "postgresql+psycopg")
#: The schemes of the PostgreSQL broker, whose queue is the ``jobs`` table.
POSTGRES_BROKER_SCHEMES = ("postgresql", "postgresql+psycopg")


class Settings(BaseSettings):
    """Every setting jobrunner reads; validated when built, so a bad value stops a process at start."""

    model_config = SettingsConfigDict(env_prefix="JOBRUNNER_", extra="ignore")

    database_url: str = f"sqlite:///{VAR_DIR / 'jobrunner.db'}"
    broker_url: str = "redis://127.0.0.1:6379/0"
    storage_dir: Path = VAR_DIR / "uploads"
    api_token: SecretStr | None = None
    #: A second token that opens the dashboard read-only (no actions); see ``api_token``.
    dashboard_readonly_token: SecretStr | None = None
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    #: The largest request body of a JSON route (uploads have ``max_upload_bytes``); larger: 413.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    #: Base of the exponential backoff: attempt n waits base * 2**(n-1) seconds (with jitter).
    retry_backoff_seconds: float = Field(default=2.0, ge=0, le=3600)
    time_limit_seconds: float = Field(default=600, gt=0)
    lease_seconds: float = Field(default=30, gt=0)
    requeue_after_seconds: float = Field(default=60, gt=0)
    #: An overdue job whose message the broker still holds is not sent again, until it has waited this
    #: long (a message the broker holds but never delivers); see ``jobs.store.resend_overdue_jobs``.
    resend_held_after_seconds: float = Field(default=600, gt=0)
    sweep_interval_seconds: float = Field(default=10, gt=0)
    quarantine_after_lost: int = Field(default=3, ge=1)
    shutdown_timeout_seconds: float = Field(default=30, ge=0)
    #: The longest a Dramatiq consumer sleeps on an empty queue; bounds enqueue-to-start latency.
    consumer_timeout_ms: int = Field(default=10, ge=1, le=60_000)
    #: Messages each worker process prefetches (0: Dramatiq's default, twice its threads).
    prefetch: int = Field(default=0, ge=0, le=65_535)
    #: How long an ``Idempotency-Key`` of ``POST /jobs`` or a replay keeps its first answer.
    idempotency_ttl_seconds: float = Field(default=86_400, gt=0, le=365 * 86_400)
    #: Bearer token of ``GET /metrics`` (the API token is accepted too); unset: the API token's rule.
    metrics_token: SecretStr | None = None
    #: How log lines are written: ``text``, or ``json`` (one object per line, with the job's context).
    log_format: Literal["text", "json"] = "text"
    #: Modules to import at start so their job kinds register (comma-separated).
    job_modules: str = ""
    #: How long the sweeper keeps succeeded (and cancelled) jobs after they finish, then deletes
    #: them with their history: seconds, an ISO 8601 duration, or 30m, 12h, 7d, 2w.
    retain_succeeded: dt.timedelta = Field(default=dt.timedelta(days=7), gt=dt.timedelta(0))
    #: The same for failed jobs (kept longer: a replay needs them).
    retain_failed: dt.timedelta = Field(default=dt.timedelta(days=90), gt=dt.timedelta(0))
    #: The longest the worker's scheduler sleeps before it looks at the schedules again (it wakes
    #: at a due fire time anyway).
    schedule_poll_seconds: float = Field(default=1.0, gt=0, le=60)

    @field_validator("retain_succeeded", "retain_failed", mode="before")
    @classmethod
    def _read_short_duration(cls, value: object) -> object:
        match = _SHORT_DURATION.match(value.strip()) if isinstance(value, str) else None
        if match is None:
            return value
        return dt.timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {value!r}") from exc
        if url.get_backend_name() not in ("postgresql", "sqlite"):
            raise ValueError("only PostgreSQL and SQLite are supported")
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in BROKER_SCHEMES:
            schemes = ", ".join(f"{scheme}://" for scheme in BROKER_SCHEMES)
            raise ValueError(f"the broker must be a Redis, RabbitMQ or PostgreSQL URL ({schemes}), got {value!r}")
        if parts.scheme not in ("unix", *POSTGRES_BROKER_SCHEMES) and not parts.hostname:
            raise ValueError(f"the broker URL has no host: {value!r}")
        return value

    @model_validator(mode="after")
    def _check_postgres_broker(self) -> Settings:
        # The PostgreSQL broker consumes the jobs table: it must be the jobs database.
        if not self.broker_is_database:
            return self
        broker, database = make_url(self.broker_url), make_url(self.database_url)
        where = [(url.host, url.port or 5432, url.database) for url in (broker, database)]
        if database.get_backend_name() != "postgresql" or where[0] != where[1]:
            raise ValueError("a PostgreSQL broker URL must name the jobs database (JOBRUNNER_DATABASE_URL)")
        return self

    @property
    def job_module_names(self) -> list[str]:
        """``job_modules`` as a list."""
        return [name.strip() for name in self.job_modules.split(",") if name.strip()]

    @property
    def broker_is_database(self) -> bool:
        """Whether the broker is the PostgreSQL broker, whose queue is the jobs table itself (no
        message of its own can be lost, so the sweeper has nothing to send again)."""
        return urlsplit(self.broker_url).scheme in POSTGRES_BROKER_SCHEMES

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite (the zero-setup default)."""
        return self.database_url.startswith("sqlite")


@functools.cache
def get_settings() -> Settings:
    """The process's settings, built once on first use (tests clear the cache after changing the env)."""
    return Settings()
