"""The jobs table as the PostgreSQL broker's queue (jobs.store.taking): what is taken, when, by whom."""

from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pytest
from sqlalchemy import update

from jobs import db, models, store
from jobs.models import JobStatus

pytestmark = pytest.mark.postgres_only

TAKE_SECONDS = 60.0


def _take(database, queue="default", limit=10):
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return store.take_jobs(conn, queue, limit=limit, take_seconds=TAKE_SECONDS)


def _set(database, job_id, **values):
    with database.engine.begin() as conn:
        conn.execute(update(models.Job).where(models.Job.id == job_id).values(**values))


def test_waiting_jobs_are_taken_oldest_first_and_once(database, make_job):
    job_ids = [make_job("noop") for _ in range(3)]
    assert _take(database, limit=2) == job_ids[:2]
    assert _take(database) == job_ids[2:]
    assert _take(database) == []


def test_a_retry_is_taken_only_once_it_is_due(database, make_job):
    job_id = make_job("noop")
    due = store.utcnow() + dt.timedelta(hours=1)
    _set(database, job_id, status=JobStatus.RETRYING, next_retry_at=due)
    assert _take(database) == []
    with database.engine.connect() as conn:
        assert store.next_due_at(conn, "default") == due
    _set(database, job_id, next_retry_at=store.utcnow() - dt.timedelta(seconds=1))
    assert _take(database) == [job_id]


def test_a_taken_job_is_taken_again_only_after_its_taker_gave_up_or_let_go(database, make_job):
    job_id = make_job("noop")
    assert _take(database) == [job_id]
    with database.engine.connect() as conn:
        assert store.next_due_at(conn, "default") > store.utcnow() + dt.timedelta(seconds=TAKE_SECONDS - 5)
    _set(database, job_id, taken_until=store.utcnow() - dt.timedelta(seconds=1))  # its consumer died
    assert _take(database) == [job_id]
    with database.engine.begin() as conn:
        assert store.release_jobs(conn, [job_id]) == 1
    assert _take(database) == [job_id]


def test_the_claim_clears_the_take_and_a_running_job_is_not_taken(database, make_job):
    job_id = make_job("noop")
    assert _take(database) == [job_id]
    with database.engine.connect() as conn:
        assert store.claim_job(conn, job_id, worker_id="w", lease_seconds=30) is not None
    with database.readers() as session:
        assert session.get(models.Job, job_id).taken_until is None
    assert _take(database) == []


def test_two_takers_at_once_never_take_the_same_job(database, make_job):
    with db.session_scope(database.sessions) as session:
        job_ids = {store.create_job(session, "noop").id for _ in range(200)}
    taken: list[list] = [[], []]

    def take(index):
        while batch := _take(database, limit=7):
            taken[index].extend(batch)

    threads = [threading.Thread(target=take, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken[0] + taken[1]) == sorted(job_ids)


def test_the_wake_up_is_delivered_with_the_commit_and_never_without(database, settings):
    url = db.normalize_url(settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {store.taking.CHANNEL}")
        with database.engine.connect() as conn:
            store.notify_waiting(conn, ["q1", "q1", "q2"])
            assert list(listener.notifies(timeout=0.2)) == []  # not before the commit
            conn.rollback()
        with database.engine.connect() as conn:
            store.notify_waiting(conn, ["q1", "q1", "q2"])
            conn.commit()
        assert sorted(n.payload for n in listener.notifies(timeout=5, stop_after=2)) == ["q1", "q2"]
