"""Cancel, queues and concurrency limits through the API and the store, without worker processes
(those are in tests/worker/test_control.py): what each call changes in the database."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import update

from jobs import db, errors, models, store
from jobs.models import AttemptOutcome, JobStatus
from tests import kinds

CLAIM = {"worker_id": "test-worker", "lease_seconds": 30}
LIMITS = {"test.limited": 2}

pytestmark = pytest.mark.usefixtures("invariants_hold")


def _claim(database, job_id, **options):
    with database.engine.connect() as conn:
        return store.claim_job(conn, job_id, **{**CLAIM, **options})


def test_cancelling_a_queued_job_ends_it_at_once_and_its_message_is_skipped(client, make_job, fetch):
    job_id = make_job("noop")
    response = client.post(f"/jobs/{job_id}/cancel", json={"reason": "not needed"})
    assert response.status_code == 202
    assert response.json() == {"job_id": str(job_id), "status": "cancelled", "stopping": False}
    shown = client.get(f"/jobs/{job_id}").json()
    assert (shown["status"], shown["cancel_reason"], shown["history"]) == ("cancelled", "not needed", [])
    assert shown["finished_at"] is not None
    assert client.get("/jobs", params={"status": "cancelled"}).json()["items"][0]["id"] == str(job_id)


def test_cancelling_a_retrying_job_ends_it_at_once(client, database, make_job, fetch):
    job_id = make_job("fail")
    job = _claim(database, job_id)
    with db.session_scope(database.sessions) as session:
        store.record_failure(session, job, RuntimeError("boom"), backoff_seconds=60)
    assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert fetch(job_id)[0].next_retry_at is None


def test_cancelling_a_finished_job_is_409_and_a_missing_one_404(client, make_job):
    job_id = make_job("noop")
    client.post(f"/jobs/{job_id}/cancel")
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 409
    assert "cancelled; only an unfinished job can be cancelled" in response.json()["detail"]
    assert client.post(f"/jobs/{uuid.uuid4()}/cancel").status_code == 404


def test_a_running_job_asked_to_stop_ends_cancelled_at_its_checkpoint_with_its_hook(client, database, make_job, fetch):
    job_id = make_job("test.stubborn")
    job = _claim(database, job_id)
    response = client.post(f"/jobs/{job_id}/cancel", json={"reason": "operator"})
    assert response.json() == {"job_id": str(job_id), "status": "running", "stopping": True}
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 202  # asked again: still stopping
    # The handler's checkpoint refuses to commit, then the worker records the cancel.
    with database.sessions() as session:
        session.execute(kinds.notes.insert().values(job_id=job_id, text="uncommitted"))
        with pytest.raises(errors.JobCancelled):
            store.checkpoint(session, job, lease_seconds=30)
        session.rollback()
    with db.session_scope(database.sessions) as session:
        assert store.record_cancellation(session, job)
    stored, history = fetch(job_id)
    assert stored.status == JobStatus.CANCELLED and stored.claim_token is not None
    assert [(a.outcome, a.error_type, a.error_message) for a in history] == [
        (AttemptOutcome.CANCELLED, "jobs.errors.JobCancelled", "operator")
    ]
    with database.engine.connect() as conn:
        notes = list(conn.execute(kinds.notes.select().where(kinds.notes.c.job_id == job_id)))
    assert [note.text for note in notes] == ["on_cancelled"]


def test_a_job_not_asked_to_stop_records_no_cancellation(database, make_job, fetch):
    job = _claim(database, make_job("noop"))
    with db.session_scope(database.sessions) as session:
        assert not store.record_cancellation(session, job)
        store.complete_job(session.connection(), job)
    assert fetch(job.id)[0].status == JobStatus.SUCCEEDED


def test_a_stopping_job_whose_worker_died_ends_cancelled(database, make_job, fetch):
    job_id = make_job("test.stubborn")
    _claim(database, job_id)
    with db.session_scope(database.sessions) as session:
        assert store.request_stop(session, [job_id]) == [job_id]
        session.execute(
            update(models.Job).where(models.Job.id == job_id).values(lease_expires_at=store.utcnow() - dt.timedelta(1))
        )
    with db.session_scope(database.sessions) as session:
        assert store.recover_lost_jobs(session, quarantine_after_lost=3) == [(job_id, JobStatus.CANCELLED)]
    stored, history = fetch(job_id)
    assert stored.status == JobStatus.CANCELLED
    assert [a.outcome for a in history] == [AttemptOutcome.CANCELLED]


def test_a_paused_queue_is_not_claimed_and_resume_resends_its_jobs(
    client, database, settings, make_job, fetch, queued_messages
):
    job_id = make_job("test.elsewhere")
    assert client.post("/queues/control/pause", json={"reason": "deploy"}).json() == {
        "name": "control",
        "paused": True,
        "changed": True,
        "resent": 0,
    }
    assert client.post("/queues/control/pause").json()["changed"] is False
    assert _claim(database, job_id) is None
    with database.engine.connect() as conn:
        assert store.describe_unclaimable(conn, job_id) == ("queue control is paused", False)
    queues = {queue["name"]: queue for queue in client.get("/queues").json()}
    assert queues["control"]["paused"] and queues["control"]["pause_reason"] == "deploy"
    assert queues["control"]["counts"] == {"queued": 1}
    assert queues["control"]["oldest_queued_seconds"] >= 0
    assert not queues["default"]["paused"]
    before = queued_messages("control")
    assert client.post("/queues/control/resume").json() == {
        "name": "control",
        "paused": False,
        "changed": True,
        "resent": 1,
    }
    # Sent again: one more message, except on the PostgreSQL broker, whose message is the row itself
    # (the resume wakes its consumers).
    assert queued_messages("control") == before + (0 if settings.broker_url.startswith("postgresql") else 1)
    assert _claim(database, job_id) is not None
    assert client.post("/queues/control/resume").json()["changed"] is False
    assert client.post("/queues/no-such-queue/pause").status_code == 404


def test_a_limited_kind_is_claimed_only_under_its_limit(database, make_job, fetch):
    first, second, third = (make_job("test.limited", {"seconds": 1}) for _ in range(3))
    assert _claim(database, first, limits=LIMITS) is not None
    assert _claim(database, second, limits=LIMITS) is not None
    with pytest.raises(errors.KindAtLimit):
        _claim(database, third, limits=LIMITS)
    assert fetch(third)[0].status == JobStatus.QUEUED
    assert _claim(database, make_job("noop"), limits=LIMITS) is not None  # other kinds: the fast claim
    # A job of the kind ends: its worker sends the waiting ones again.
    with db.session_scope(database.sessions) as session:
        assert store.wake_waiting_jobs(session, "test.limited", max_running=2) == 1
