"""Cancel, pause and concurrency limits with real worker processes. Waits are bounded and
generous; the times measured are printed as figures, never asserted. After each scenario, what
``jobctl check`` checks holds."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select, text

from jobs import db, models, store
from jobs.models import AttemptOutcome, JobStatus
from tests import kinds
from tests.conftest import BACKEND
from tests.worker.processes import job_statuses, wait_until

pytestmark = pytest.mark.usefixtures("invariants_hold")

#: Longest a cancelled running job may take to end (the stopper polls every second).
STOP_TIMEOUT_SECONDS = 15


def _create(database, kind, args=None, count=1):
    with db.session_scope(database.sessions) as session:
        return [store.create_job(session, kind, args).id for _ in range(count)]


def _status(database, job_id):
    with database.readers() as session:
        return session.scalar(select(models.Job.status).where(models.Job.id == job_id))


def _cancel(database, job_id):
    with db.session_scope(database.sessions) as session:
        return store.cancel(session, [job_id], reason="test")


def _notes(database, job_id):
    with database.engine.connect() as conn:
        return list(conn.execute(select(kinds.notes.c.text).where(kinds.notes.c.job_id == job_id)).scalars())


def _worker_connections(database):
    """PostgreSQL: the worker processes' connections to the test database, by state."""
    with database.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT state, count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'jobrunner-worker' GROUP BY state"
            )
        ).all()
    return {state: count for state, count in rows}


def test_cancelled_running_jobs_end_cancelled_rolled_back_and_leak_no_connection(database, workers, capsys):
    """A ``sleep`` job (it checkpoints every second) and handlers that never checkpoint, one of them
    holding a write open (PostgreSQL: SQLite's one writer would hold off the cancel request itself)."""
    worker = workers(threads=4)
    (sleeping,) = _create(database, "sleep", {"seconds": 120})
    (stubborn,) = _create(database, "test.stubborn", {"seconds": 120})
    writers = _create(database, "test.stubborn", {"seconds": 120, "write_first": True}) if BACKEND != "sqlite" else []
    job_ids = [sleeping, stubborn, *writers]
    wait_until(lambda: set(job_statuses(database, job_ids).values()) == {JobStatus.RUNNING}, what="the jobs running")
    time.sleep(1.5)  # well into their handlers' loops
    asked = time.monotonic()
    for job_id in job_ids:
        assert _cancel(database, job_id).stopping == [job_id]
    wait_until(
        lambda: set(job_statuses(database, job_ids).values()) == {JobStatus.CANCELLED},
        timeout=STOP_TIMEOUT_SECONDS,
        what="the cancelled jobs to end cancelled",
    )
    with capsys.disabled():
        print(f"\n[figure] {len(job_ids)} running jobs cancelled {time.monotonic() - asked:.2f} s after the requests")
    for job_id in job_ids:
        with database.readers() as session:
            history = store.list_attempts(session, job_id)
        assert [(attempt.outcome, attempt.error_message) for attempt in history] == [(AttemptOutcome.CANCELLED, "test")]
    # The handlers' own writes are rolled back; on_cancelled ran in the transaction that recorded it.
    assert [_notes(database, job_id) for job_id in [stubborn, *writers]] == [["on_cancelled"]] * (1 + len(writers))
    if BACKEND == "postgresql":
        # Every job session is closed: no worker connection is left inside a transaction, and the
        # pool holds no more than its size (4 threads + heartbeat, sweeper and stopper).
        wait_until(lambda: "idle in transaction" not in _worker_connections(database), what="sessions closed")
        assert sum(_worker_connections(database).values()) <= 4 + 3
    (after,) = _create(database, "noop")  # the worker goes on running jobs
    wait_until(lambda: _status(database, after) == JobStatus.SUCCEEDED, what="the next job to succeed")
    assert worker.alive()


def test_a_paused_queue_starts_nothing_until_resumed(database, workers, capsys):
    with db.session_scope(database.sessions) as session:
        store.pause_queue(session, "control")
    workers(threads=4)
    paused = _create(database, "test.elsewhere", count=10)
    (other,) = _create(database, "noop")  # another queue is not paused
    wait_until(lambda: _status(database, other) == JobStatus.SUCCEEDED, what="the unpaused queue to run")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert set(job_statuses(database, paused).values()) == {JobStatus.QUEUED}, "a job of the paused queue started"
        time.sleep(0.2)
    with db.session_scope(database.sessions) as session:
        assert store.resume_queue(session, "control") == 10
    resumed = time.monotonic()
    wait_until(
        lambda: set(job_statuses(database, paused).values()) == {JobStatus.SUCCEEDED},
        timeout=30,
        what="every job after resume",
    )
    with capsys.disabled():
        print(f"\n[figure] resume: 10 jobs of the paused queue done {time.monotonic() - resumed:.2f} s after it")


def test_max_running_bounds_the_running_jobs_of_a_kind_across_workers(database, workers, capsys):
    job_ids = _create(database, "test.limited", {"seconds": 0.3}, count=20)
    workers(threads=4, name="a")
    workers(threads=4, name="b")
    started = time.monotonic()
    samples = []
    count_running = select(func.count()).where(
        models.Job.kind == "test.limited", models.Job.status == JobStatus.RUNNING
    )
    while time.monotonic() - started < 120:
        with database.readers() as session:
            samples.append(session.scalar(count_running))
        if set(job_statuses(database, job_ids).values()) == {JobStatus.SUCCEEDED}:
            break
        time.sleep(0.05)
    assert set(job_statuses(database, job_ids).values()) == {JobStatus.SUCCEEDED}, "not every limited job finished"
    assert max(samples) <= 2, f"more than max_running=2 ran at once: {max(samples)}"
    assert max(samples) == 2, "the limit was never reached: the test shows nothing"
    with database.readers() as session:
        first, last = session.execute(
            select(func.min(models.Job.started_at), func.max(models.Job.finished_at)).where(models.Job.id.in_(job_ids))
        ).one()
    with capsys.disabled():
        print(
            f"\n[figure] max_running=2: 20 jobs of 0.3 s on 2 workers x 4 threads: "
            f"{(last - first).total_seconds():.1f} s "
            f"from the first start to the last end (3 s at best); at most {max(samples)} running in "
            f"{len(samples)} samples"
        )
