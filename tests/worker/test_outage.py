"""A database outage longer than the lease while jobs run is not a worker death: nothing is taken
back as ``lost`` (the sweeper's first pass after it could reach the database again is a grace
pass; a job that ended during the outage keeps its lease through the heartbeat, which writes its
outcome once the database answers), and each job's effect lands exactly once. On a PostgreSQL
server of the test's own."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from jobs import models, store
from jobs.models import AttemptOutcome, JobStatus
from tests import kinds
from tests.worker.processes import create_notes, database_reachable, wait_until

pytestmark = [pytest.mark.postgres_only, pytest.mark.restarts_postgres, pytest.mark.usefixtures("invariants_hold")]

#: A lease of 3 s (a heartbeat every second) and a sweep every 0.1 s: when the database is back, a
#: sweeper pass comes before the next heartbeat, and would find every lease expired.
RACE = {"JOBRUNNER_LEASE_SECONDS": "3", "JOBRUNNER_SWEEP_INTERVAL_SECONDS": "0.1"}
#: How long the database stays down: several leases.
OUTAGE_SECONDS = 8.0
#: Longer than the lease and the worker's retries of an outcome record together, with room to spare.
LONG_OUTAGE_SECONDS = 12.0


def _jobs(database, job_ids):
    with database.readers() as session:
        statuses = dict(
            session.execute(select(models.Job.id, models.Job.status).where(models.Job.id.in_(job_ids))).all()
        )
        outcomes = list(session.scalars(select(models.JobAttempt.outcome).where(models.JobAttempt.job_id.in_(job_ids))))
    return statuses, outcomes


def _run_through_outage(throwaway_postgres, database, workers, *, job_seconds: float, outage_seconds: float):
    """Four note jobs of ``job_seconds`` on a worker with :data:`RACE` settings; the server stops
    once all four run and starts again ``outage_seconds`` later. Checks that every job succeeds with
    no ``lost`` attempt and its note written once; returns the attempts' outcomes and the seconds
    from the restart until all succeeded."""
    job_ids = create_notes(database, 4, sleep_seconds=job_seconds)
    worker = workers(threads=4, **RACE)
    wait_until(
        lambda: list(_jobs(database, job_ids)[0].values()).count(JobStatus.RUNNING) == 4, what="all four running"
    )
    throwaway_postgres.halt()
    time.sleep(outage_seconds)  # the outage itself: leases expire meanwhile, unseen by anyone
    throwaway_postgres.start()
    back = time.monotonic()
    wait_until(lambda: database_reachable(database), what="PostgreSQL to answer again")
    wait_until(lambda: set(_jobs(database, job_ids)[0].values()) == {JobStatus.SUCCEEDED}, what="every job to succeed")
    recovered = time.monotonic() - back
    _, outcomes = _jobs(database, job_ids)
    assert AttemptOutcome.LOST not in outcomes, f"an outage was counted as a worker death: {outcomes}"
    assert worker.alive()
    with database.engine.connect() as conn:
        notes = dict(conn.execute(select(kinds.notes.c.job_id, func.count()).group_by(kinds.notes.c.job_id)).all())
    assert notes == dict.fromkeys(job_ids, 1), "a job's effect is missing or applied twice"
    return outcomes, recovered


def test_an_outage_longer_than_the_lease_counts_no_job_as_lost(throwaway_postgres, database, workers, capsys):
    # Each job writes its note, then sleeps through the outage: it is running when the server stops.
    outcomes, recovered = _run_through_outage(
        throwaway_postgres, database, workers, job_seconds=OUTAGE_SECONDS + 4, outage_seconds=OUTAGE_SECONDS
    )
    with database.readers() as session:
        taken_back = session.scalar(select(func.count()).where(models.JobAttempt.error_type == store.CLAIM_LOST_TYPE))
    assert taken_back == 0, "a running job was taken back: the first sweep after the outage was no grace pass"
    with capsys.disabled():
        print(
            f"\n[figure] PostgreSQL down {OUTAGE_SECONDS:.0f} s (lease 3 s, sweep every 0.1 s) with 4 jobs "
            f"running: 0 lost, 0 doubled; attempts {sorted(outcomes)}; all done {recovered:.1f} s after it came back"
        )


def test_jobs_that_end_during_a_long_outage_are_recorded_when_it_is_over(throwaway_postgres, database, workers, capsys):
    # Each job ends (its commit fails) a moment into the outage; the worker gives up retrying the
    # record after about 3 s (middleware.RECORD_TRIES), long before the database is back.
    outcomes, recovered = _run_through_outage(
        throwaway_postgres, database, workers, job_seconds=2, outage_seconds=LONG_OUTAGE_SECONDS
    )
    with capsys.disabled():
        print(
            f"\n[figure] PostgreSQL down {LONG_OUTAGE_SECONDS:.0f} s (lease 3 s), 4 jobs ending during it: 0 lost, "
            f"0 doubled; attempts {sorted(outcomes)}; all done {recovered:.1f} s after it came back"
        )
