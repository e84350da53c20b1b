"""Every send of a job records the key of its message on the job's row (``jobs.message_id``; unset
for the first message, keyed by the job's ID), so the sweeper asks the broker about the message
that was actually sent (``jobs.store.resend_overdue_jobs``)."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from sqlalchemy import update

from jobs import db, errors, models, sending, store
from jobs.models import JobStatus

CLAIM = {"worker_id": "test-worker", "lease_seconds": 30}


def _set(database, job_id, **columns):
    with database.engine.begin() as conn:
        conn.execute(update(models.Job.__table__).where(models.Job.id == job_id).values(**columns))


def _ago(seconds):
    return store.utcnow() - dt.timedelta(seconds=seconds)


def _claim(database, job_id):
    with database.engine.connect() as conn:
        return store.claim_job(conn, job_id, **CLAIM)


def _fail(database, job_id, error):
    job = _claim(database, job_id)
    with db.session_scope(database.sessions) as session:
        store.record_failure(session, job, error, backoff_seconds=60)
    return job


# Each path: given the test database, a job factory and a session whose sends are recorded (opened
# by calling ``recording()``), make a job and send it again by that path; returns the job's ID.


def _created(database, make_job, recording):
    with recording() as session:
        return store.create_job(session, "noop").id


def _taken_back(database, make_job, recording):
    job_id = make_job("noop")
    _claim(database, job_id)
    _set(database, job_id, lease_expires_at=_ago(1))
    with recording() as session:
        assert store.recover_lost_jobs(session, quarantine_after_lost=3) == [(job_id, JobStatus.QUEUED)]
    return job_id


def _retried(database, make_job, recording):
    job_id = make_job("fail")
    job = _claim(database, job_id)
    with recording() as session:
        assert store.record_failure(session, job, RuntimeError("flaky"), backoff_seconds=60) == JobStatus.RETRYING
    return job_id


def _interrupted(database, make_job, recording):
    job_id = make_job("noop")
    job = _claim(database, job_id)
    with recording() as session:
        assert store.interrupt_job(session, job, reason="the worker is stopping")
    return job_id


def _replayed(database, make_job, recording):
    job_id = make_job("fail")
    _fail(database, job_id, errors.PermanentError("broken"))
    with recording() as session:
        assert store.replay_jobs(session, [job_id]) == [job_id]
    return job_id


def _nudged(database, make_job, recording):
    job_id = make_job("fail")
    _fail(database, job_id, RuntimeError("flaky"))
    with recording() as session:
        assert store.retry_jobs_now(session, [job_id]) == [job_id]
    return job_id


def _released(database, make_job, recording):
    job_id = make_job("noop", delay=60)
    _set(database, job_id, run_at=_ago(120))
    with recording() as session:
        assert store.release_overdue_scheduled(session, older_than_seconds=60) == [job_id]
    return job_id


def _woken(database, make_job, recording):
    job_id = make_job("test.limited", {"seconds": 0})
    with recording() as session:
        assert store.wake_waiting_jobs(session, "test.limited", max_running=2) == 1
    return job_id


def _resumed(database, make_job, recording):
    job_id = make_job("test.elsewhere")
    with db.session_scope(database.sessions) as session:
        store.pause_queue(session, "control")
    with recording() as session:
        assert store.resume_queue(session, "control") == 1
    return job_id


def _resent(database, make_job, recording):
    job_id = make_job("noop")
    _set(database, job_id, enqueued_at=_ago(120))
    with recording() as session:
        assert store.resend_overdue_jobs(session, older_than_seconds=60) == [job_id]
    return job_id


PATHS = {
    "created": _created,
    "taken back": _taken_back,
    "retried": _retried,
    "interrupted": _interrupted,
    "replayed": _replayed,
    "retried now": _nudged,
    "released": _released,
    "woken": _woken,
    "resumed": _resumed,
    "resent by the sweeper": _resent,
}


@pytest.mark.parametrize("path", PATHS)
def test_the_key_a_job_records_is_the_key_of_the_message_sent(database, make_job, fetch, path):
    sent: list[sending.JobMessage] = []

    @contextlib.contextmanager
    def recording():
        with db.session_scope(database.sessions) as session:
            session.info[sending.SENDER_KEY] = sent.extend
            yield session

    job_id = PATHS[path](database, make_job, recording)
    assert [message.job_id for message in sent] == [job_id]
    row = fetch(job_id)[0]
    # What the sweeper asks the broker about (see resend_overdue_jobs); a message sent without a key
    # gets a random one (worker.producer.to_message), which no row records.
    assert sent[0].message_id is not None
    assert (row.message_id or row.id) == sent[0].message_id


def test_each_send_of_a_job_has_a_key_of_its_own(database, make_job, fetch):
    """A job sent again by several paths is recorded under a new key each time: a message of an
    earlier send that the broker still holds is not mistaken for the last one."""
    job_id = make_job("fail")
    keys = [fetch(job_id)[0].message_id or job_id]
    _fail(database, job_id, RuntimeError("flaky"))
    keys.append(fetch(job_id)[0].message_id)
    with db.session_scope(database.sessions) as session:
        store.retry_jobs_now(session, [job_id])
    keys.append(fetch(job_id)[0].message_id)
    _fail(database, job_id, errors.PermanentError("broken"))
    with db.session_scope(database.sessions) as session:
        store.replay_jobs(session, [job_id])
    keys.append(fetch(job_id)[0].message_id)
    assert None not in keys and len(set(keys)) == len(keys)
