"""The session middleware's guarantees: fencing, duplicates, time limits, closed sessions."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from jobs import db, store
from jobs.models import AttemptOutcome, JobStatus
from tests.conftest import APPLICATION_NAME
from tests.worker.processes import wait_until


def _idle_in_transaction(database) -> int:
    with database.engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = :name AND state LIKE 'idle in transaction%'"
            ),
            {"name": APPLICATION_NAME},
        ).scalar_one()


def _no_connection_stays_checked_out(database) -> None:
    """No connection of the test's pool stays checked out. The in-process worker's heartbeat and
    sweeper check one out of that pool for a moment now and then; a job's leaked one stays out."""
    wait_until(lambda: database.engine.pool.checkedout() == 0, timeout=30, what="every connection back in the pool")


def _no_connection_stays_idle_in_transaction(database) -> None:
    """No connection of the test's pool stays idle in a transaction (in this run's database: other
    runs on the server, the other half of make test's PostgreSQL pass among them, use the same
    application_name). The in-process worker's sweeper and heartbeat share that pool and run short
    transactions of their own at any moment (seen between two of their statements): such a
    connection leaves the state within milliseconds, one a job leaked never does."""
    wait_until(lambda: _idle_in_transaction(database) == 0, timeout=30, what="no connection idle in transaction")


def test_second_message_for_a_finished_job_does_not_run_it_again(
    make_job, drain, fetch, count_notes, database, settings, caplog
):
    job_id = make_job("test.note", {"text": "once"})
    drain()
    with db.session_scope(database.sessions) as session:  # send the same ID again
        from jobs import sending

        sending.send_after_commit(session, sending.JobMessage(job_id, "default"))
    drain()
    job, history = fetch(job_id)
    assert (job.status, job.attempts, len(history)) == (JobStatus.SUCCEEDED, 1, 1)
    assert count_notes(job_id) == 1
    if not settings.broker_url.startswith("postgresql"):  # there a second wake-up takes no finished row
        assert "skipped: job is succeeded" in caplog.text


@pytest.mark.brokers(without=("postgres",))  # the PostgreSQL broker has no message without its row
def test_message_for_a_missing_job_is_acked_and_logged(database, drain, queued_messages, caplog):
    from jobs import sending

    missing = uuid.uuid4()
    with db.session_scope(database.sessions) as session:
        sending.send_after_commit(session, sending.JobMessage(missing, "default"))
    drain()
    assert queued_messages() == 0
    assert f"job {missing} (None) skipped: no such job" in caplog.text


def test_worker_whose_claim_was_taken_over_commits_nothing(make_job, drain, fetch, count_notes, caplog):
    job_id = make_job("test.stolen")
    drain()
    job, history = fetch(job_id)
    assert job.status == JobStatus.RUNNING  # still the other worker's
    assert history == []
    assert count_notes(job_id) == 0
    assert "claim_lost" in caplog.text


def test_checkpoint_after_losing_the_claim_commits_nothing(make_job, drain, fetch, count_notes):
    job_id = make_job("test.checkpoint_stolen")
    drain()
    job, history = fetch(job_id)
    assert job.status == JobStatus.RUNNING and history == []
    assert count_notes(job_id) == 0


def test_checkpoint_keeps_the_work_before_it_when_the_job_then_fails(make_job, drain, fetch, database):
    job_id = make_job("test.checkpoint")
    drain()
    job, _ = fetch(job_id)
    assert job.status == JobStatus.FAILED
    from tests import kinds

    with database.engine.connect() as conn:
        texts = conn.execute(kinds.notes.select().where(kinds.notes.c.job_id == job_id)).all()
    assert [row.text for row in texts] == ["kept"]


def test_handler_past_its_time_limit_is_stopped_and_recorded(make_job, drain, fetch, database):
    job_id = make_job("test.sleep", {"seconds": 30})
    drain()
    job, history = fetch(job_id)
    assert job.status == JobStatus.FAILED
    assert [a.outcome for a in history] == [AttemptOutcome.ERROR, AttemptOutcome.FAILED]
    assert job.error_type == "dramatiq.middleware.time_limit.TimeLimitExceeded"
    _no_connection_stays_checked_out(database)


def test_job_created_by_a_job_that_fails_is_neither_stored_nor_sent(make_job, drain, fetch, database):
    job_id = make_job("test.note", {"child": True, "raise_after": True}, max_attempts=1)
    drain()
    assert fetch(job_id)[0].status == JobStatus.FAILED
    with database.sessions() as session:
        jobs, _ = store.list_jobs(session, kind="noop")
    assert jobs == []


def test_job_created_by_a_job_runs_after_its_parent_commits(make_job, drain, fetch, database):
    make_job("test.note", {"child": True})
    drain()
    with database.sessions() as session:
        children, _ = store.list_jobs(session, kind="noop")
    assert [child.status for child in children] == [JobStatus.SUCCEEDED]


def test_failure_is_recorded_in_a_fresh_session_leaving_nothing_open(make_job, drain, fetch, count_notes, database):
    job_id = make_job("test.note", {"raise_after": True}, max_attempts=1)
    drain()
    job, history = fetch(job_id)
    assert job.status == JobStatus.FAILED and job.error_type == "tests.kinds.Boom"
    assert [a.outcome for a in history] == [AttemptOutcome.FAILED]
    assert count_notes(job_id) == 0
    _no_connection_stays_checked_out(database)
    if database.engine.dialect.name == "postgresql":
        _no_connection_stays_idle_in_transaction(database)


def test_a_thousand_jobs_leave_no_connection_checked_out(make_job, drain, fetch, database):
    ids = []
    with db.session_scope(database.sessions) as session:
        for n in range(1000):
            if n % 3 == 0:
                ids.append(store.create_job(session, "test.note", {"raise_after": True}, max_attempts=1).id)
            else:
                ids.append(store.create_job(session, "test.note", {"text": str(n)}).id)
    drain()
    with database.sessions() as session:
        statuses = [store.get_job(session, job_id).status for job_id in ids]
    assert statuses.count(JobStatus.FAILED) == 334
    assert statuses.count(JobStatus.SUCCEEDED) == 666
    _no_connection_stays_checked_out(database)
    if database.engine.dialect.name == "postgresql":
        _no_connection_stays_idle_in_transaction(database)


def test_a_job_stopped_with_a_half_read_cursor_leaves_the_database_usable(make_job, drain, fetch, count_notes):
    stopped = make_job("test.open_cursor_timeout")
    drain()
    assert fetch(stopped)[0].status == JobStatus.FAILED
    after = [make_job("test.note", {"text": str(n)}) for n in range(5)]
    drain()
    assert [fetch(job_id)[0].status for job_id in after] == [JobStatus.SUCCEEDED] * 5
    assert count_notes(stopped) == 0
