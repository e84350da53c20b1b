"""The PostgreSQL broker under faults: wake-ups that come twice to two racing workers, a PostgreSQL
restart under a worker process; the sweeper on it. Every job runs, and its effect is applied once
(each ``test.note`` job writes one note). (``kill -9`` of a worker, and of one of a worker's
processes, is tested on every broker: test_recovery.py, test_children.py.)"""

from __future__ import annotations

import datetime as dt
import threading

import dramatiq
import pytest
from sqlalchemy import func, select, update

from jobs import models, store
from jobs.models import AttemptOutcome, JobStatus
from tests import kinds
from tests.worker.processes import count_status, create_notes, database_reachable, job_statuses, wait_until
from worker import pgbroker, sweeper

pytestmark = [
    pytest.mark.postgres_only,
    pytest.mark.parametrize("broker_url", ["postgres"], indirect=True),
    pytest.mark.usefixtures("invariants_hold"),
]


def _assert_each_ran_once(database, job_ids):
    assert set(job_statuses(database, job_ids).values()) == {JobStatus.SUCCEEDED}
    with database.engine.connect() as conn:
        notes = dict(conn.execute(select(kinds.notes.c.job_id, func.count()).group_by(kinds.notes.c.job_id)).all())
        attempts = dict(
            conn.execute(
                select(models.JobAttempt.job_id, func.count())
                .where(models.JobAttempt.outcome == AttemptOutcome.SUCCEEDED)
                .group_by(models.JobAttempt.job_id)
            ).all()
        )
    assert [job_id for job_id in job_ids if notes.get(job_id) != 1] == [], "an effect missing or applied twice"
    assert [job_id for job_id in job_ids if attempts.get(job_id) != 1] == [], "a job succeeded twice"


def test_duplicate_wake_ups_and_two_workers_racing_run_each_job_once(database, broker, worker):
    # Two Dramatiq workers (each with its consumer) on one broker, in this process, woken over and
    # over by NOTIFYs that name no new job.
    job_ids = create_notes(database, 300)
    second = dramatiq.Worker(broker, worker_threads=4, worker_timeout=10)
    second.start()
    stop = threading.Event()

    def wake_again_and_again():
        with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while not stop.is_set():
                store.notify_waiting(conn, ["default"])

    waker = threading.Thread(target=wake_again_and_again)
    waker.start()
    try:
        wait_until(
            lambda: count_status(database, job_ids, JobStatus.SUCCEEDED) == len(job_ids), what="every job to succeed"
        )
    finally:
        stop.set()
        waker.join()
        second.stop()
    _assert_each_ran_once(database, job_ids)


@pytest.mark.restarts_postgres
def test_worker_on_the_postgresql_broker_survives_a_postgresql_restart(throwaway_postgres, settings, database, workers):
    # On a PostgreSQL server of the test's own (initdb in a temp dir), never the machine's: the jobs
    # database and the broker are one server, so both connections drop at once.
    assert settings.broker_url == throwaway_postgres.url
    job_ids = create_notes(database, 100, sleep_seconds=0.05)
    worker = workers()
    wait_until(lambda: count_status(database, job_ids, JobStatus.SUCCEEDED) >= 1, what="the first success")
    throwaway_postgres.restart()
    wait_until(lambda: database_reachable(database), what="PostgreSQL to answer again")
    more = create_notes(database, 20)  # sent (NOTIFY) after the restart: the consumer listens again
    job_ids += more
    wait_until(
        lambda: count_status(database, job_ids, JobStatus.SUCCEEDED) == len(job_ids), what="every job to succeed"
    )
    assert worker.alive()
    _assert_each_ran_once(database, job_ids)


def test_sweeper_re_sends_nothing_and_keeps_the_queue_order(database, settings, make_job, fetch):
    # The rows are the queue: a job waiting long has no message to lose, and bumping its enqueued_at
    # would send it to the back of the line.
    old = make_job("noop")
    long_ago = store.utcnow() - dt.timedelta(seconds=settings.requeue_after_seconds + 5)
    with database.engine.begin() as conn:
        conn.execute(update(models.Job).where(models.Job.id == old).values(enqueued_at=long_ago))
    report = sweeper.sweep_once(database, settings)
    assert report.ran and report.resent == []
    assert fetch(old)[0].enqueued_at == long_ago


def test_a_full_consumer_takes_freed_slots_together_not_one_statement_per_ack(database, broker, monkeypatch):
    # With jobs waiting, refilling each slot as its job is acked would cost a take (a statement and a
    # round trip) per job: the consumer waits a little for a quarter of its prefetch to free up.
    create_notes(database, 20)
    takes: list[int] = []
    take_jobs = store.take_jobs

    def recording(conn, queue, *, limit, take_seconds):
        job_ids = take_jobs(conn, queue, limit=limit, take_seconds=take_seconds)
        takes.append(len(job_ids))
        return job_ids

    monkeypatch.setattr(store, "take_jobs", recording)
    monkeypatch.setattr(pgbroker, "TAKE_WAIT_SECONDS", 120.0)  # the wait ends on the acks, not the clock
    consumer = broker.consume("default", prefetch=8, timeout=10)
    held = []
    try:
        held = [next(consumer) for _ in range(8)]
        assert None not in held and takes == [8]
        consumer.ack(held[0])
        second_ack = threading.Timer(0.2, consumer.ack, [held[1]])
        second_ack.start()
        held.append(next(consumer))
        second_ack.join()
        assert takes == [8, 2], "the second freed slot was refilled by the same take as the first"
    finally:
        consumer.requeue([message for message in held if message is not None])
        consumer.close()
