"""The two outage rules, pass by pass on both databases: a grace pass extends expired leases and
takes nothing back; a worker that finds its job taken back turns its ``lost`` attempt into an
``error``, which quarantine does not count."""

from __future__ import annotations

import pytest

from jobs import db, store
from jobs.models import AttemptOutcome, JobStatus
from jobs.store.clock import database_time
from worker import sweeper

pytestmark = pytest.mark.usefixtures("invariants_hold")


def _claim_expired(database, job_id):
    """Claim the job with a lease that ended a second ago (on the database's clock)."""
    with database.engine.connect() as conn:
        job = store.claim_job(conn, job_id, worker_id="host-a:1", lease_seconds=-1)
    assert job is not None
    return job


def test_a_grace_pass_extends_expired_leases_and_takes_nothing_back(database, settings, make_job, fetch):
    job_id = make_job("noop")
    _claim_expired(database, job_id)
    report = sweeper.sweep_once(database, settings, grace=True)
    assert report.extended == [job_id] and report.requeued == []
    job, history = fetch(job_id)
    assert job.status == JobStatus.RUNNING and history == []
    assert sweeper.sweep_once(database, settings).requeued == [], "the extended lease is live"
    with database.engine.connect() as conn:
        assert job.lease_expires_at > database_time(conn)


def test_a_worker_that_finds_its_job_taken_back_turns_its_lost_attempt_into_an_error(
    database, settings, make_job, fetch
):
    job_id = make_job("noop")
    job = _claim_expired(database, job_id)
    assert sweeper.sweep_once(database, settings).requeued == [job_id]
    assert [a.outcome for a in fetch(job_id)[1]] == [AttemptOutcome.LOST]
    with db.session_scope(database.sessions) as session:
        assert store.record_worker_alive(session, job, worker_id="host-a:1")
    with db.session_scope(database.sessions) as session:
        assert not store.record_worker_alive(session, job, worker_id="host-a:1"), "recorded twice"
    (attempt,) = fetch(job_id)[1]
    assert attempt.outcome == AttemptOutcome.ERROR and attempt.error_type == store.CLAIM_LOST_TYPE
    assert fetch(job_id)[0].status == JobStatus.QUEUED


def test_a_deaths_count_ignores_attempts_whose_worker_came_back(database, settings, make_job, fetch):
    job_id = make_job("noop", max_attempts=10)
    for number in range(settings.quarantine_after_lost):
        job = _claim_expired(database, job_id)
        sweeper.sweep_once(database, settings)
        if number == 0:  # the first worker was alive after all
            with db.session_scope(database.sessions) as session:
                store.record_worker_alive(session, job, worker_id="host-a:1")
    job, history = fetch(job_id)
    assert job.status == JobStatus.QUEUED, "quarantined although one of the workers was alive"
    assert [a.outcome for a in history] == [AttemptOutcome.ERROR] + [AttemptOutcome.LOST] * (
        settings.quarantine_after_lost - 1
    )
