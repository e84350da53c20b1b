"""The store's state changes, against the real database and Redis (no worker)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import update

from jobs import db, errors, models, sending, store
from jobs.models import AttemptOutcome, JobStatus
from tests import kinds

CLAIM = {"worker_id": "test-worker", "lease_seconds": 30}


def _claim(database, job_id):
    with database.engine.connect() as conn:
        return store.claim_job(conn, job_id, **CLAIM)


def test_failed_attempt_becomes_retrying_with_a_delayed_message(database, make_job, fetch, queued_messages):
    job_id = make_job("fail")
    job = _claim(database, job_id)
    with db.session_scope(database.sessions) as session:
        status = store.record_failure(session, job, RuntimeError("flaky"), backoff_seconds=60)
    assert status == JobStatus.RETRYING
    row, history = fetch(job_id)
    assert row.status == JobStatus.RETRYING
    assert row.next_retry_at - row.started_at > dt.timedelta(seconds=50)
    assert [a.outcome for a in history] == [AttemptOutcome.ERROR]
    assert queued_messages("default.DQ") == 1  # re-sent with a delay, after the commit


def test_a_job_is_claimed_by_exactly_one_of_two_claims(database, make_job, fetch):
    job_id = make_job("noop")
    first, second = _claim(database, job_id), _claim(database, job_id)
    assert first is not None and second is None
    row, _ = fetch(job_id)
    assert (row.status, row.attempts, row.claim_token) == (JobStatus.RUNNING, 1, first.claim_token)


def test_claim_of_a_missing_job_explains_itself(database):
    missing = uuid.uuid4()
    assert _claim(database, missing) is None
    with database.engine.connect() as conn:
        assert store.describe_unclaimable(conn, missing) == ("no such job", False)


def _take_over(database, job_id):
    """What another worker does once this one's lease expired: a new claim token on the row."""
    with database.engine.begin() as conn:
        conn.execute(update(models.Job.__table__).where(models.Job.id == job_id).values(claim_token=uuid.uuid4()))


def test_worker_that_lost_its_claim_cannot_commit_success_or_writes(database, make_job, fetch, count_notes):
    job_id = make_job("noop")
    job = _claim(database, job_id)
    _take_over(database, job_id)
    with database.sessions() as session:
        session.execute(kinds.notes.insert().values(job_id=job_id, text="stale"))
        assert store.complete_job(session.connection(), job) is False
        session.rollback()
    assert fetch(job_id)[0].status == JobStatus.RUNNING
    assert count_notes(job_id) == 0
    with db.session_scope(database.sessions) as session:
        assert store.record_failure(session, job, RuntimeError("late"), backoff_seconds=0) is None
    assert fetch(job_id)[1] == []


def test_worker_that_lost_its_claim_cannot_checkpoint(database, make_job, count_notes):
    job_id = make_job("noop")
    job = _claim(database, job_id)
    _take_over(database, job_id)
    with database.sessions() as session:
        session.execute(kinds.notes.insert().values(job_id=job_id, text="stale"))
        with pytest.raises(errors.ClaimLost):
            store.checkpoint(session, job, lease_seconds=30)
    assert count_notes(job_id) == 0


def test_checkpoint_commits_the_work_so_far_and_renews_the_lease(database, make_job, fetch, count_notes):
    job_id = make_job("noop")
    job = _claim(database, job_id)
    before = fetch(job_id)[0].lease_expires_at
    with database.sessions() as session:
        session.execute(kinds.notes.insert().values(job_id=job_id, text="block 1"))
        store.checkpoint(session, job, lease_seconds=600)
    assert count_notes(job_id) == 1
    assert fetch(job_id)[0].lease_expires_at > before + dt.timedelta(seconds=500)


def test_rolled_back_session_sends_nothing(database, queued_messages, session):
    store.create_job(session, "noop")
    session.rollback()
    assert queued_messages() == 0
    with database.sessions() as check:
        assert check.query(models.Job).count() == 0


def test_committed_session_sends_each_job_once(database, queued_messages, session):
    ids = {store.create_job(session, "noop").id for _ in range(3)}
    assert queued_messages() == 0  # nothing before the commit
    session.commit()
    assert queued_messages() == 3
    assert len(ids) == 3


def test_a_failed_send_leaves_the_job_queued_logged_with_its_id_and_counted(database_url, kind_registry, fetch, caplog):
    def broken_sender(messages):
        raise ConnectionError("redis is down")

    broken = db.make_database(database_url, pool_size=1, sender=broken_sender, registry=kind_registry)
    failed_before = sending.failed_sends()
    try:
        with db.session_scope(broken.sessions) as session:
            job_id = store.create_job(session, "noop").id
    finally:
        broken.dispose()
    assert fetch(job_id)[0].status == JobStatus.QUEUED
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "stay queued" in r.getMessage()]
    assert len(warnings) == 1 and str(job_id) in warnings[0].getMessage()
    assert sending.failed_sends() == failed_before + 1


def test_replay_moves_failed_jobs_back_to_queued_once(database, make_job, fetch, queued_messages):
    job_id = make_job("fail", max_attempts=1)
    job = _claim(database, job_id)
    with db.session_scope(database.sessions) as session:
        store.record_failure(session, job, RuntimeError("x"), backoff_seconds=0)
    queued_before = queued_messages()
    with db.session_scope(database.sessions) as session:
        assert store.replay_jobs(session, [job_id], reason="fixed the bug") == [job_id]
    with db.session_scope(database.sessions) as session:
        assert store.replay_jobs(session, [job_id]) == []  # no longer failed
    row, history = fetch(job_id)
    assert (row.status, row.attempts, row.replay_count) == (JobStatus.QUEUED, 0, 1)
    assert history[-1].outcome == AttemptOutcome.REPLAYED and history[-1].error_message == "fixed the bug"
    assert queued_messages() == queued_before + 1


def test_replay_of_a_job_that_is_not_failed_is_refused(database, make_job):
    job_id = make_job("noop")
    with database.sessions() as session:
        with pytest.raises(errors.JobNotReplayable):
            store.replay_job(session, job_id)
        with pytest.raises(errors.JobNotFound):
            store.replay_job(session, uuid.uuid4())


def test_list_jobs_pages_newest_first_without_gaps_or_repeats(database, make_job):
    made = [make_job("noop") for _ in range(7)]
    seen, cursor = [], None
    with database.sessions() as session:
        while True:
            page, cursor = store.list_jobs(session, limit=3, cursor=cursor)
            seen += [job.id for job in page]
            if cursor is None:
                break
        assert seen == list(reversed(made))
        with pytest.raises(errors.InvalidCursor):
            store.list_jobs(session, cursor="not-a-cursor")


def test_datetimes_come_back_timezone_aware(make_job, fetch):
    job, _ = fetch(make_job("noop"))
    assert job.created_at.tzinfo is not None
    assert abs(job.created_at - store.utcnow()) < dt.timedelta(minutes=1)
