"""The tables of schedules: ``schedules`` (one row per schedule, with its next fire time) and
``schedule_fires`` (one row per fire: its unique (schedule_name, fire_at) makes each fire time one
job, whichever worker gets there first)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Float, ForeignKey, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from jobs.models import Base, BigIntKey, JSONType, UTCDateTime


class Schedule(Base):
    """A schedule: a job of ``kind`` with ``args`` at each fire time, unless paused."""

    __tablename__ = "schedules"
    __table_args__ = (CheckConstraint("(cron IS NULL) <> (every_seconds IS NULL)", name="one_timing"),)

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(100))
    args: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    cron: Mapped[str | None] = mapped_column(String(200))
    every_seconds: Mapped[float | None] = mapped_column(Float)
    #: The IANA timezone a cron expression is read in.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    #: Declared in code (upserted by each worker at boot) rather than made through the API or CLI.
    declared: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Paused schedules fire nothing; a resume fires from the next time after it, catching nothing up.
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The next time it fires; a worker that finds it passed fires once (for the latest time missed).
    next_fire_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_fire_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ScheduleFire(Base):
    """One fire of a schedule and the job it created (the job may since have been pruned)."""

    __tablename__ = "schedule_fires"
    __table_args__ = (UniqueConstraint("schedule_name", "fire_at", name="uq_schedule_fires_schedule_name_fire_at"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    schedule_name: Mapped[str] = mapped_column(ForeignKey("schedules.name", ondelete="CASCADE"))
    #: The fire time (for a manual run: when it was asked for).
    fire_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: Made by ``run`` (the API's or the CLI's), not by the clock.
    manual: Mapped[bool] = mapped_column(Boolean, default=False)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
