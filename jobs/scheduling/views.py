"""How a schedule reads from outside: the API's answers and ``jobctl schedules list --json``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict


class ScheduleOut(BaseModel):
    """A schedule, its timing and its next fire time."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    kind: str
    args: dict[str, Any]
    cron: str | None
    every_seconds: float | None
    timezone: str
    #: Declared in code (upserted by the workers at boot) rather than made at run time.
    declared: bool
    paused: bool
    next_fire_at: dt.datetime
    last_fire_at: dt.datetime | None
