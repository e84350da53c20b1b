"""The PostgreSQL broker under faults: wake-ups that come twice to two racing workers, a PostgreSQL
restart under a worker process; the sweeper on it. Every job runs, and its effect is applied once
(each ``test.note`` job writes one note). (``kill -9`` of a worker, and of one of a worker's
processes, is tested on every broker: test_recovery.py, test_children.py.)"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid

import dramatiq
import pytest
from sqlalchemy import func, select, update

from jobs import db, models, store
from jobs.models import AttemptOutcome, JobStatus
from tests import kinds
from tests.worker.processes import count_status, create_notes, database_reachable, job_statuses, wait_until
from worker import pgbroker, sweeper, testing

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


# --- claiming as taking ----------------------------------------------------------------------------


def _in_process_worker(broker, threads):
    testing.boot_in_process(broker)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=10)
    worker.start()
    return worker


def _recording_claims(monkeypatch) -> list:
    """The job IDs the session middleware claims itself (one statement each)."""
    claimed: list = []
    claim_job = store.claim_job

    def recording(conn, job_id, **kwargs):
        claimed.append(job_id)
        return claim_job(conn, job_id, **kwargs)

    monkeypatch.setattr(store, "claim_job", recording)
    return claimed


def _run_sampling_running(database, broker, job_ids, *, threads):
    """Run ``job_ids`` on an in-process worker of ``threads`` threads; the most jobs seen running
    at once (sampled), per kind."""
    worker = _in_process_worker(broker, threads)
    most: dict[str, int] = {}
    count_running = (
        select(models.Job.kind, func.count())
        .where(models.Job.id.in_(job_ids), models.Job.status == JobStatus.RUNNING)
        .group_by(models.Job.kind)
    )

    def all_done():
        with database.engine.connect() as conn:
            for kind, running in conn.execute(count_running):
                most[kind] = max(most.get(kind, 0), running)
        return count_status(database, job_ids, JobStatus.SUCCEEDED) == len(job_ids)

    try:
        wait_until(all_done, what="every job to succeed")
    finally:
        worker.stop()
    return most


def test_a_worker_claims_the_jobs_it_takes_and_never_holds_more_than_its_threads(database, broker, monkeypatch):
    # The take is the claim: no job needs a claim statement of its own. And as a job claimed by a take
    # counts as started, the worker takes no more than it has threads to start them on.
    claimed_by_middleware = _recording_claims(monkeypatch)
    job_ids = create_notes(database, 16, sleep_seconds=0.1)
    most = _run_sampling_running(database, broker, job_ids, threads=3)
    assert claimed_by_middleware == [], "a job was claimed on its own, not by the take"
    assert 1 <= most["test.note"] <= 3, f"{most['test.note']} jobs running at once on 3 threads"
    _assert_each_ran_once(database, job_ids)


def test_jobs_of_a_kind_with_max_running_are_taken_and_claimed_under_the_limit(database, broker, make_job, monkeypatch):
    # The take only takes them; the middleware's claim counts the kind's running jobs first. One it
    # refused (the kind at its limit) is taken again as soon as a job of the kind ends.
    claimed_by_middleware = _recording_claims(monkeypatch)
    broker.take_seconds = 3600  # a refused job must not wait for its take to expire
    limited = [make_job("test.limited", {"seconds": 0.1}) for _ in range(8)]
    notes = create_notes(database, 8)
    most = _run_sampling_running(database, broker, limited + notes, threads=6)
    assert set(claimed_by_middleware) == set(limited), "not only the limited kind's jobs were claimed one by one"
    assert most["test.limited"] <= 2, "more than max_running=2 ran at once"
    assert set(job_statuses(database, limited + notes).values()) == {JobStatus.SUCCEEDED}


def _take_and_claim(database, limit=10, limited_kinds=()):
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return store.take_and_claim_jobs(
            conn,
            "default",
            limit=limit,
            lease_seconds=30,
            worker_id="w1",
            limited_kinds=limited_kinds,
            take_seconds=30,
        )


def test_take_and_claim_claims_the_oldest_waiting_jobs_each_with_its_own_token(database, make_job, fetch):
    later = make_job("noop", delay=3600)
    first, second, third = make_job("noop"), make_job("noop"), make_job("noop")
    taken = _take_and_claim(database, limit=2)
    assert [job_id for job_id, _job in taken] == [first, second], "not the oldest due jobs, in order"
    jobs = [job for _job_id, job in taken]
    assert all(job is not None and job.attempt == 1 and job.kind == "noop" for job in jobs)
    assert len({job.claim_token for job in jobs}) == 2, "the claims share a token"
    for job in jobs:
        row = fetch(job.id)[0]
        assert (row.status, row.claim_token, row.worker_id, row.taken_until) == (
            JobStatus.RUNNING,
            job.claim_token,
            "w1",
            None,
        )
        assert row.lease_expires_at is not None and row.started_at is not None
    assert {job_id for job_id, _job in _take_and_claim(database)} == {third}, "a claimed or undue job taken again"
    assert fetch(later)[0].status == JobStatus.SCHEDULED


def test_take_and_claim_only_takes_the_jobs_of_limited_kinds_and_none_of_a_paused_queue(database, make_job, fetch):
    limited, plain = make_job("test.limited", {"seconds": 0}), make_job("noop")
    with db.session_scope(database.sessions) as session:
        store.pause_queue(session, "default")
    assert _take_and_claim(database, limited_kinds={"test.limited"}) == []
    with db.session_scope(database.sessions) as session:
        store.resume_queue(session, "default")
    taken = dict(_take_and_claim(database, limited_kinds={"test.limited"}))
    assert set(taken) == {limited, plain}
    assert taken[limited] is None and taken[plain] is not None
    row = fetch(limited)[0]
    assert (row.status, row.attempts, row.claim_token) == (JobStatus.QUEUED, 0, None)
    assert row.taken_until is not None, "the limited job was not marked taken"


def test_unclaim_gives_a_claimed_job_back_unstarted_and_is_fenced(database, make_job, fetch):
    job_id = make_job("noop")
    [(_id, job)] = _take_and_claim(database)
    assert job is not None
    stale = dataclasses.replace(job, claim_token=uuid.uuid4())
    with database.engine.begin() as conn:
        assert store.unclaim_jobs(conn, [stale]) == 0, "a stale claim was given back"
        assert store.unclaim_jobs(conn, [job]) == 1
    row = fetch(job_id)[0]
    assert (row.status, row.attempts, row.claim_token, row.worker_id) == (JobStatus.QUEUED, 0, None, None)
    assert [job_id for job_id, _job in _take_and_claim(database)] == [job_id], "the given-back job is not takeable"


def test_a_stopping_worker_gives_back_the_jobs_it_claimed_and_did_not_start(database, broker):
    # A consumer that took (and so claimed) jobs no thread started hands them back as Dramatiq's
    # worker does at shutdown (Consumer.requeue): queued again, the attempt not counted.
    job_ids = create_notes(database, 4)
    broker.claim_as_taking(worker_id="w1", lease_seconds=30, limited_kinds=(), threads=4)
    consumer = broker.consume("default", prefetch=8, timeout=10)
    try:
        held = [next(consumer) for _ in range(4)]
        assert all(message is not None for message in held)
        assert count_status(database, job_ids, JobStatus.RUNNING) == 4
        consumer.requeue(held)
    finally:
        consumer.close()
    assert set(job_statuses(database, job_ids).values()) == {JobStatus.QUEUED}
    with database.engine.connect() as conn:
        attempts = conn.execute(select(models.Job.attempts).where(models.Job.id.in_(job_ids))).scalars().all()
        attempt_rows = conn.execute(select(func.count()).select_from(models.JobAttempt)).scalar_one()
    assert set(attempts) == {0} and attempt_rows == 0, "a job never started counts an attempt"


def test_a_closing_consumer_gives_back_the_jobs_it_took_and_never_handed_out(database, broker):
    job_ids = create_notes(database, 4)
    broker.claim_as_taking(worker_id="w1", lease_seconds=30, limited_kinds=(), threads=4)
    consumer = broker.consume("default", prefetch=8, timeout=10)
    try:
        handed_out = next(consumer)
    finally:
        consumer.close()
    statuses = job_statuses(database, job_ids)
    assert statuses.pop(uuid.UUID(handed_out.args[0])) == JobStatus.RUNNING, "the job Dramatiq holds was given back"
    assert set(statuses.values()) == {JobStatus.QUEUED}, "a job taken and never handed out stays claimed"
