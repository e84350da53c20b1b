"""A schedule fired by real worker processes: each fire time makes one job however many workers
run, none twice and none missed, and downtime gives one catch-up fire (PostgreSQL: the run that
shows it takes ~30 s, so it is left out of the SQLite pass; tests/jobs/test_scheduling.py covers
the same decisions on both databases)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import statistics

import pytest
from sqlalchemy import select

from jobs import db, models, store
from jobs.scheduling import models as schedule_models
from jobs.scheduling import service
from jobs.scheduling.timing import Timing
from tests.worker.processes import wait_until

pytestmark = pytest.mark.postgres_only

PERIOD = dt.timedelta(seconds=2)
#: Fires watched while two workers run (~20 s).
FIRES_WITH_TWO_WORKERS = 10


def _fires(database) -> list[tuple[dt.datetime, models.Job | None]]:
    fire, job = schedule_models.ScheduleFire, models.Job
    with database.readers() as session:
        rows = session.execute(
            select(fire.fire_at, job).outerjoin(job, job.id == fire.job_id).where(fire.manual.is_(False))
        ).all()
    return sorted((row[0], row[1]) for row in rows)


def _all_ran(database) -> bool:
    return all(job is not None and job.status == models.JobStatus.SUCCEEDED for _, job in _fires(database))


def _consecutive(times: list[dt.datetime]) -> bool:
    return all(later - earlier == PERIOD for earlier, later in zip(times, times[1:], strict=False))


def test_two_workers_fire_each_time_once_and_downtime_gives_one_catch_up(database, workers):
    with db.session_scope(database.sessions) as session:
        service.create_schedule(session, "tick", "noop", Timing(every_seconds=PERIOD.total_seconds()))
    running = [workers(name="a"), workers(name="b")]
    wait_until(lambda: len(_fires(database)) >= FIRES_WITH_TWO_WORKERS, timeout=120, what="ten fires")
    wait_until(lambda: _all_ran(database), timeout=30, what="the fired jobs to run")
    for worker in running:  # both at once
        os.kill(worker.pid, signal.SIGTERM)
    for worker in running:
        worker.stop()
    before = _fires(database)
    last = before[-1][0]
    # Down for more than three periods, then one worker again.
    wait_until(lambda: store.utcnow() > last + 3.5 * PERIOD, timeout=30, what="three periods")
    restarted = workers(name="c")
    wait_until(lambda: len(_fires(database)) >= len(before) + 2, timeout=120, what="two fires after the restart")
    restarted.stop()

    fires = _fires(database)
    times = [fire_at for fire_at, _ in fires]
    assert _consecutive(times[: len(before)]), f"a fire time was missed or repeated: {times}"
    catch_up, regular = times[len(before)], times[len(before) + 1]
    assert catch_up - last >= 3 * PERIOD, "the missed fires were made one by one"
    assert regular - catch_up == PERIOD and _consecutive(times[len(before) :])
    jobs = [job for _, job in fires]
    assert all(job is not None and job.kind == "noop" for job in jobs)
    assert len({job.id for job in jobs if job}) == len(fires)  # one job per fire, none shared
    # Recorded, not asserted (a shared machine): how late each on-time fire made its job.
    lateness = [
        (job.created_at - fire_at).total_seconds() * 1000
        for fire_at, job in fires
        if job is not None and fire_at != catch_up
    ]
    print(f"fire lateness: median {statistics.median(lateness):.1f} ms, max {max(lateness):.1f} ms")  # -rP shows it
