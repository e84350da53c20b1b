"""Leases are on the database's clock: workers whose own clocks are ten minutes off, one each way,
neither take back each other's running jobs nor leave a dead worker's job waiting.

The process tests are PostgreSQL only: SQLite runs inside the worker process, so its clock is the
worker's clock (and SQLite serves one host only)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from jobs import models, store
from jobs.models import AttemptOutcome, JobStatus
from jobs.store.clock import database_time
from tests import kinds
from tests.skew import skewed_clock_env
from tests.worker.processes import create_notes, wait_until

pytestmark = pytest.mark.usefixtures("invariants_hold")
#: SQLite runs inside the worker process: there, the worker's clock is the database's.
skewed_workers = pytest.mark.postgres_only

#: Ten minutes, each way.
SKEW_SECONDS = 600


def _history(database, job_ids):
    with database.readers() as session:
        jobs = session.scalars(select(models.Job).where(models.Job.id.in_(job_ids))).all()
        attempts = session.scalars(select(models.JobAttempt).where(models.JobAttempt.job_id.in_(job_ids))).all()
    return {job.id: job.status for job in jobs}, attempts


def _notes(database):
    with database.engine.connect() as conn:
        return dict(conn.execute(select(kinds.notes.c.job_id, func.count()).group_by(kinds.notes.c.job_id)).all())


@skewed_workers
def test_workers_with_clocks_twenty_minutes_apart_take_back_nothing_from_each_other(database, workers):
    # Each job outlives several leases (2 s): only the heartbeats keep them; every 0.5 s each
    # worker's sweeper looks for expired leases, written by a worker whose clock is 20 minutes off.
    job_ids = create_notes(database, 8, sleep_seconds=6)
    workers(
        threads=4, name="behind", **skewed_clock_env(-SKEW_SECONDS)
    )  # its leases would have looked 20 minutes old to...
    wait_until(lambda: JobStatus.RUNNING in _history(database, job_ids)[0].values(), what="a job to start")
    workers(threads=4, name="ahead", **skewed_clock_env(SKEW_SECONDS))  # ...this one's sweeper
    wait_until(
        lambda: set(_history(database, job_ids)[0].values()) == {JobStatus.SUCCEEDED},
        timeout=90,
        what="every job to succeed",
    )
    statuses, attempts = _history(database, job_ids)
    assert [a.outcome for a in attempts if a.outcome != AttemptOutcome.SUCCEEDED] == []
    assert _notes(database) == dict.fromkeys(job_ids, 1)


@skewed_workers
def test_a_dead_workers_job_is_taken_back_after_its_lease_by_a_worker_whose_clock_is_behind(database, workers, capsys):
    (job_id,) = create_notes(database, 1, sleep_seconds=60)
    victim = workers(name="victim", **skewed_clock_env(SKEW_SECONDS))  # its leases would have looked 10 minutes longer
    wait_until(lambda: _history(database, [job_id])[0][job_id] == JobStatus.RUNNING, what="the job to start")
    victim.kill()
    with database.engine.connect() as conn:
        killed_at = database_time(conn)
    with database.engine.begin() as conn:  # make the rerun quick
        conn.execute(models.Job.__table__.update().where(models.Job.id == job_id).values(args={"text": "0"}))
    workers(name="behind", **skewed_clock_env(-SKEW_SECONDS))  # its sweeper would have waited 10 minutes more
    wait_until(
        lambda: _history(database, [job_id])[0][job_id] == JobStatus.SUCCEEDED,
        timeout=60,
        what="the dead worker's job to be taken back and run (a skewed clock would take 10 minutes)",
    )
    _, attempts = _history(database, [job_id])
    assert [a.outcome for a in attempts] == [AttemptOutcome.LOST, AttemptOutcome.SUCCEEDED]
    taken_back = attempts[0].finished_at - killed_at
    assert taken_back < dt.timedelta(minutes=5), f"taken back {taken_back} after the kill: a clock was used"
    assert _notes(database) == {job_id: 1}
    with capsys.disabled():
        print(
            f"\n[figure] clock skew: a dead worker (clock +10 min)'s job taken back by a worker with a clock "
            f"-10 min, {taken_back.total_seconds():.1f} s after the kill (lease 2 s, sweep every 0.5 s, "
            "on the database's clock)"
        )


def test_the_database_clock_is_what_the_claim_writes(database, make_job):
    job_id = make_job("noop")
    with database.engine.connect() as conn:
        before = database_time(conn)
        conn.rollback()
        job = store.claim_job(conn, job_id, worker_id="clock-test", lease_seconds=30)
        after = database_time(conn)
    assert job is not None
    with database.readers() as session:
        row = store.get_job(session, job_id)
    assert before <= row.started_at <= after
    assert row.lease_expires_at - row.started_at == dt.timedelta(seconds=30)
