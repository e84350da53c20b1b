"""Losing RabbitMQ under load, with real worker processes: every connection of the run's vhost
closed by the server, and a node of the test's own stopped and started again. Workers reconnect;
no job is lost, none runs twice, and losing the broker never counts as a worker's death. (The
broker-dependent tests elsewhere, marked ``brokers``, run on RabbitMQ too: API sends, retries,
kill -9, a purged queue, the sweeper's re-send.) Recovery times are printed, never asserted."""

from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import func, select

from jobs import models
from jobs.models import AttemptOutcome, JobStatus
from tests import kinds
from tests.worker.processes import create_notes, wait_until

pytestmark = [
    pytest.mark.usefixtures("invariants_hold"),
    pytest.mark.skipif(
        os.environ.get("JOBRUNNER_TEST_DATABASE") == "sqlite", reason="RabbitMQ runs on the PostgreSQL pass only"
    ),
]


def _succeeded(database, job_ids):
    with database.readers() as session:
        return session.scalar(
            select(func.count()).where(models.Job.id.in_(job_ids), models.Job.status == JobStatus.SUCCEEDED)
        )


def _check_each_ran_once(database, job_ids):
    """Every job succeeded after one attempt, its note written once, and no attempt counted lost."""
    with database.readers() as session:
        rows = session.execute(select(models.Job.status, models.Job.attempts).where(models.Job.id.in_(job_ids))).all()
        lost = session.scalar(select(func.count()).where(models.JobAttempt.outcome == AttemptOutcome.LOST))
    with database.engine.connect() as conn:
        notes = dict(conn.execute(select(kinds.notes.c.job_id, func.count()).group_by(kinds.notes.c.job_id)).all())
    assert len(rows) == len(job_ids) and {tuple(row) for row in rows} == {(JobStatus.SUCCEEDED, 1)}
    assert all(notes.get(job_id) == 1 for job_id in job_ids), "a job's effect is missing or applied twice"
    assert lost == 0, "losing the broker was counted as a worker's death"


@pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True)
def test_workers_reconnect_when_every_connection_of_the_vhost_is_closed(database, workers, rabbitmq_vhost, capsys):
    job_ids = create_notes(database, 300, sleep_seconds=0.02)
    worker = workers(threads=4)
    wait_until(lambda: _succeeded(database, job_ids) >= 30, what="some progress")
    rabbitmq_vhost.close_connections("test")  # the worker's consumers and producers, and the test's own
    closed_at, done_at_close = time.monotonic(), _succeeded(database, job_ids)
    job_ids += create_notes(database, 50)  # sent on a fresh connection (Dramatiq's enqueue retries)
    wait_until(lambda: _succeeded(database, job_ids) == len(job_ids), what="every job to succeed")
    all_done_after = time.monotonic() - closed_at
    _check_each_ran_once(database, job_ids)
    assert "connection" in worker.log().lower()  # the worker saw it (Dramatiq restarts its consumers)
    assert worker.stop() == 0
    with capsys.disabled():
        print(
            f"\n[figure] close_all_connections of the vhost under load ({done_at_close} of 300 jobs done): "
            f"{len(job_ids)} jobs (50 sent after it), 0 lost, 0 twice; all done {all_done_after:.1f} s after the close"
        )


@pytest.mark.restarts_rabbitmq
def test_workers_survive_a_restart_of_the_rabbitmq_node(throwaway_rabbitmq, database, workers, capsys):
    job_ids = create_notes(database, 200, sleep_seconds=0.1)  # 5 s of work at least on 4 threads
    worker = workers(threads=4)
    wait_until(lambda: _succeeded(database, job_ids) >= 10, what="some progress")
    throwaway_rabbitmq.stop()
    stopped_at, done_at_stop = time.monotonic(), _succeeded(database, job_ids)
    job_ids += create_notes(database, 30)  # accepted while the node is down: they stay queued
    throwaway_rabbitmq.start()
    down_for = time.monotonic() - stopped_at
    wait_until(lambda: _succeeded(database, job_ids) == len(job_ids), what="every job to succeed")
    all_done_after = time.monotonic() - stopped_at - down_for
    _check_each_ran_once(database, job_ids)
    assert worker.stop() == 0
    with capsys.disabled():
        print(
            f"\n[figure] RabbitMQ node stopped for {down_for:.1f} s under load ({done_at_stop} of 200 jobs done): "
            f"{len(job_ids)} jobs (30 accepted while it was down), 0 lost, 0 twice; all done "
            f"{all_done_after:.1f} s after it was back"
        )
