"""When a schedule fires: a cron expression read in a timezone (``croniter`` over ``zoneinfo``, so a
DST change moves the UTC times as the wall clock says), or every N seconds counted from the Unix epoch
(so every worker computes the same fire times)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import zoneinfo

from croniter import CroniterError, croniter

from jobs import errors

#: The shortest interval of an ``every`` schedule.
MIN_EVERY_SECONDS = 1.0
#: The longest (a year): longer waits are a delayed job's business.
MAX_EVERY_SECONDS = 366 * 86_400.0


class InvalidSchedule(errors.Invalid):
    """The schedule's timing is not valid."""


@dataclasses.dataclass(frozen=True, slots=True)
class Timing:
    """A cron expression in ``timezone``, or an interval of ``every_seconds``; exactly one of them."""

    cron: str | None = None
    every_seconds: float | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_seconds is None):
            raise InvalidSchedule("a schedule needs exactly one of cron and every_seconds")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise InvalidSchedule(f"not a cron expression: {self.cron!r}")
        if self.cron is not None:
            try:  # valid, yet it may never fire (the 31st of February)
                croniter(self.cron).get_next(dt.datetime)
            except CroniterError:
                raise InvalidSchedule(f"the cron expression never fires: {self.cron!r}") from None
        if self.every_seconds is not None and not MIN_EVERY_SECONDS <= self.every_seconds <= MAX_EVERY_SECONDS:
            raise InvalidSchedule(f"every_seconds must be between {MIN_EVERY_SECONDS:g} and {MAX_EVERY_SECONDS:g}")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise InvalidSchedule(f"unknown timezone: {self.timezone!r}") from None

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first fire time strictly after ``moment`` (aware), in UTC."""
        if self.every_seconds is not None:
            ticks = math.floor(moment.timestamp() / self.every_seconds) + 1
            return _from_timestamp(ticks * self.every_seconds)
        local = moment.astimezone(zoneinfo.ZoneInfo(self.timezone))
        fire: dt.datetime = croniter(self._expression, local).get_next(dt.datetime)
        return fire.astimezone(dt.UTC)

    def latest_until(self, moment: dt.datetime) -> dt.datetime:
        """The last fire time at or before ``moment`` (aware), in UTC."""
        if self.every_seconds is not None:
            ticks = math.floor(moment.timestamp() / self.every_seconds)
            return _from_timestamp(ticks * self.every_seconds)
        local = moment.astimezone(zoneinfo.ZoneInfo(self.timezone))
        # croniter's get_prev is strictly before its start: start a microsecond later to include ``moment``.
        fire: dt.datetime = croniter(self._expression, local + dt.timedelta(microseconds=1)).get_prev(dt.datetime)
        return fire.astimezone(dt.UTC)

    @property
    def _expression(self) -> str:
        if self.cron is None:
            raise RuntimeError("not a cron schedule")
        return self.cron

    def describe(self) -> str:
        """``cron 0 3 * * * (Europe/Paris)`` or ``every 2 s``."""
        if self.every_seconds is not None:
            return f"every {self.every_seconds:g} s"
        return f"cron {self.cron} ({self.timezone})"


def _from_timestamp(seconds: float) -> dt.datetime:
    # Whole milliseconds: every worker computes exactly the same fire_at (the unique key's second half).
    return dt.datetime.fromtimestamp(round(seconds, 3), dt.UTC)
