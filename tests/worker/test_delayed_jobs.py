"""Delayed jobs (``run_at`` / ``delay``): ``scheduled`` until due, then run by the broker's delayed
message; the claim refuses them before ``run_at``; the sweeper runs those whose message was lost."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from jobs import db, store
from jobs.models import JobStatus
from tests.acceptance.conftest import CLAIM
from tests.worker.processes import wait_until

#: How far ahead the tests schedule: long enough to see the job wait, short for the suite.
DELAY_SECONDS = 1.5


def _status(fetch, job_id) -> str:
    return fetch(job_id)[0].status


def test_a_delayed_job_waits_scheduled_and_runs_soon_after_run_at(client, fetch, worker):
    run_at = store.utcnow() + dt.timedelta(seconds=DELAY_SECONDS)
    answer = client.post("/jobs", json={"kind": "noop", "run_at": run_at.isoformat()})
    assert answer.status_code == 202 and answer.json()["status"] == "scheduled"
    job_id = uuid.UUID(answer.json()["job_id"])
    listed = client.get("/jobs", params={"status": "scheduled"}).json()["items"]
    assert [job["id"] for job in listed] == [str(job_id)] and listed[0]["run_at"] is not None

    wait_until(lambda: _status(fetch, job_id) == JobStatus.SUCCEEDED, timeout=30, what="the delayed job to run")
    job, attempts = fetch(job_id)
    assert job.run_at == run_at
    assert job.started_at >= run_at, "the job started before its run_at"
    assert [a.outcome for a in attempts] == ["succeeded"]
    # Recorded, not asserted: the machine is shared (tests/benchmarks/scheduling.py measures it).
    print(f"delayed job lateness: {(job.started_at - run_at).total_seconds() * 1000:.1f} ms")  # -rP shows it


def test_the_claim_refuses_a_scheduled_job_before_run_at_and_takes_it_when_due(database, fetch):
    with db.session_scope(database.sessions) as session:
        job_id = store.create_job(session, "noop", delay=3600).id
    with database.engine.connect() as conn:
        assert store.claim_job(conn, job_id, **CLAIM) is None
        reason, expired = store.describe_unclaimable(conn, job_id)
        conn.rollback()
    assert reason.startswith("job is scheduled for") and not expired
    assert _status(fetch, job_id) == JobStatus.SCHEDULED
    with db.session_scope(database.sessions) as session:
        store.get_job(session, job_id).run_at = store.utcnow() - dt.timedelta(seconds=1)
    with database.engine.connect() as conn:
        claimed = store.claim_job(conn, job_id, **CLAIM)
    assert claimed is not None and _status(fetch, job_id) == JobStatus.RUNNING


def test_a_run_at_in_the_past_queues_the_job_at_once(database, fetch, queued_messages):
    with db.session_scope(database.sessions) as session:
        job_id = store.create_job(session, "noop", run_at=store.utcnow() - dt.timedelta(minutes=1)).id
    assert _status(fetch, job_id) == JobStatus.QUEUED
    assert queued_messages() == 1  # not delayed


def test_run_at_must_be_aware_and_not_given_with_a_delay(client, database):
    naive = dt.datetime.now().replace(microsecond=0).isoformat()
    assert client.post("/jobs", json={"kind": "noop", "run_at": naive}).status_code == 422
    both = {"kind": "noop", "run_at": store.utcnow().isoformat(), "delay_seconds": 5}
    assert client.post("/jobs", json=both).status_code == 422
    assert client.post("/jobs", json={"kind": "noop", "delay_seconds": -1}).status_code == 422
    with db.session_scope(database.sessions) as session, pytest.raises(ValueError, match="not both"):
        store.create_job(session, "noop", run_at=store.utcnow(), delay=1)


@pytest.mark.brokers(without=("postgres",))  # the PostgreSQL broker has no message to lose
def test_a_delayed_job_whose_message_was_flushed_still_runs(database, fetch, flush_broker, workers):
    with db.session_scope(database.sessions) as session:
        job = store.create_job(session, "noop", delay=1.0)
        job_id, run_at = job.id, job.run_at
    flush_broker()  # the delayed message is lost: only the row knows the job
    worker = workers()  # sweeps every 0.5 s, re-sends after 2 s (FAST_RECOVERY)
    wait_until(lambda: _status(fetch, job_id) == JobStatus.SUCCEEDED, timeout=60, what="the sweeper to run the job")
    job, _ = fetch(job_id)
    assert job.started_at >= run_at
    worker.stop()
