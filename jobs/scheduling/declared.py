"""Schedules declared in code: ``nightly = schedule("nightly-report", "report.build", cron="0 3 * * *")``
at a module's top level. As with :func:`jobs.registry.job_kind`, declaring registers nothing: a
:class:`jobs.registry.Registry` collects the schedules of the modules it is given, and each worker
upserts them at boot (:func:`jobs.scheduling.service.upsert_declared`), leaving a run-time pause alone."""

from __future__ import annotations

import dataclasses
from typing import Any

from jobs.scheduling.timing import Timing


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A schedule declared in code: its name, the kind and args of the jobs it creates, its timing."""

    name: str
    kind: str
    timing: Timing
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


def schedule(
    name: str,
    kind: str,
    *,
    cron: str | None = None,
    every: float | None = None,
    args: dict[str, Any] | None = None,
    timezone: str = "UTC",
) -> ScheduleSpec:
    """Declare the schedule ``name``: a job of ``kind`` with ``args`` at each time of the cron
    expression ``cron`` read in ``timezone`` (an IANA name), or every ``every`` seconds.

    Raises:
        InvalidSchedule: the timing is not valid (both or neither of cron and every, a bad
        expression or timezone).
    """
    return ScheduleSpec(
        name=name, kind=kind, timing=Timing(cron=cron, every_seconds=every, timezone=timezone), args=dict(args or {})
    )
