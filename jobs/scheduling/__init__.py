"""Cron schedules: jobs created at fixed times, each fire time exactly once however many workers run.

- :mod:`jobs.scheduling.timing`: when a schedule fires (``croniter`` and ``zoneinfo``, or an interval).
- :mod:`jobs.scheduling.declared`: :func:`schedule`, declaring a schedule in code (collected by a
  :class:`jobs.registry.Registry` as job kinds are).
- :mod:`jobs.scheduling.models`: the ``schedules`` table and the ``schedule_fires`` record whose
  unique (schedule_name, fire_at) makes each fire time one job.
- :mod:`jobs.scheduling.service`: managing schedules and firing the due ones (the worker's scheduler
  thread, :mod:`worker.scheduler`, calls :func:`jobs.scheduling.service.fire_due`).

Only ``declared`` is imported here: :mod:`jobs.registry` imports it, and the rest imports the registry.
"""

from jobs.scheduling.declared import ScheduleSpec, schedule

__all__ = ["ScheduleSpec", "schedule"]
