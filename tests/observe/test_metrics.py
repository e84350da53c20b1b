"""``GET /metrics`` against the real app in process: each number equals what the database says."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from jobs import db, models, store
from jobs.observe.models import DURATION_BUCKETS_SECONDS
from tests.observe.scrape import by_name, expected_counters, nonzero, parse, scraped_counters


def _scrape(client: TestClient, **headers: str) -> dict:
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


@pytest.mark.usefixtures("invariants_hold")
def test_counters_equal_what_the_database_says(client, database, drain):
    for _ in range(3):
        client.post("/jobs", json={"kind": "noop", "args": {}})
    client.post("/jobs", json={"kind": "fail", "args": {"fail_times": 1}})  # a retry, then success
    failed = client.post("/jobs", json={"kind": "fail", "args": {"permanent": True}}).json()["job_id"]
    drain()
    assert client.post(f"/jobs/{failed}/replay", json={"reason": "again"}).status_code == 202
    drain()

    samples = _scrape(client)
    assert nonzero(scraped_counters(samples)) == nonzero(expected_counters(database))
    assert scraped_counters(samples)["replayed"][("fail",)] == 1
    assert scraped_counters(samples)["retries"][("fail",)] == 1
    assert scraped_counters(samples)["finished"] == {
        ("noop", "succeeded"): 3,
        ("fail", "succeeded"): 1,
        ("fail", "failed"): 2,
    }
    assert by_name(samples, "jobrunner_jobs") == {}  # nothing left unfinished
    # The histogram: every attempt but the replay record has a duration.
    assert by_name(samples, "jobrunner_attempt_duration_seconds_count") == {
        (("kind", "noop"),): 3.0,
        (("kind", "fail"),): 4.0,
    }
    buckets = by_name(samples, "jobrunner_attempt_duration_seconds_bucket")
    assert len([labels for labels in buckets if ("kind", "noop") in labels]) == len(DURATION_BUCKETS_SECONDS) + 1
    assert buckets[(("kind", "noop"), ("le", "+Inf"))] == 3.0
    # The API's own HTTP metrics, by route template, in the same answer.
    requests = by_name(samples, "http_requests_total")
    assert requests[(("handler", "/jobs"), ("method", "POST"), ("status", "2xx"))] == 5.0
    assert requests[(("handler", "/jobs/{job_id}/replay"), ("method", "POST"), ("status", "2xx"))] == 1.0


def _insert_job(session, **values):
    """A job row written directly: no message is sent, so no worker or sweeper of this test touches it."""
    now = store.utcnow()
    row = {"id": uuid.uuid4(), "kind": "noop", "queue": "default", "args": {}, "max_attempts": 3}
    job = models.Job(**{**row, "created_at": now, "enqueued_at": now, **values})
    session.add(job)
    return job.id


def test_gauges_show_unfinished_jobs_and_the_sweeper_work(client, database):
    past = store.utcnow() - dt.timedelta(hours=1)
    with db.session_scope(database.sessions) as session:
        lost = _insert_job(
            session,
            status="running",
            attempts=1,
            worker_id="gone:1",
            started_at=past,
            lease_expires_at=past,
            claim_token=uuid.uuid4(),
        )
        _insert_job(
            session,
            status="running",
            attempts=1,
            worker_id="here:1",
            started_at=past,
            lease_expires_at=past + dt.timedelta(hours=2),
            claim_token=uuid.uuid4(),
        )
        _insert_job(session, status="queued", created_at=past, enqueued_at=past)
        _insert_job(session, status="queued")
        # Replayed a moment ago: it waits since its replay, not since its creation two days ago.
        _insert_job(session, status="queued", replay_count=1, created_at=past - dt.timedelta(days=2))
    samples = _scrape(client)
    assert by_name(samples, "jobrunner_jobs") == {
        (("kind", "noop"), ("queue", "default"), ("status", status.value)): {
            "running": 2.0,
            "queued": 3.0,
        }.get(status.value, 0.0)
        for status in models.JobStatus
        if status not in models.TERMINAL
    }
    assert by_name(samples, "jobrunner_jobs_running") == {(): 2.0}
    assert by_name(samples, "jobrunner_leases_expired") == {(): 1.0}
    oldest = by_name(samples, "jobrunner_queue_oldest_queued_age_seconds")[(("queue", "default"),)]
    assert 3600 <= oldest < 3600 + 600

    with db.session_scope(database.sessions) as session:
        assert store.recover_lost_jobs(session, quarantine_after_lost=3) == [(lost, models.JobStatus.QUEUED)]
        assert len(store.resend_overdue_jobs(session, older_than_seconds=60)) == 1  # the old queued one
    samples = _scrape(client)
    assert by_name(samples, "jobrunner_leases_expired") == {(): 0.0}
    assert by_name(samples, "jobrunner_sweeper_resends_total") == {(): 1.0}
    assert scraped_counters(samples)["lost"] == {("noop",): 1}
    assert nonzero(scraped_counters(samples)) == nonzero(expected_counters(database))


def test_metrics_need_the_metrics_token_or_the_api_token(settings, database):
    secrets = {"api_token": SecretStr("api-secret"), "metrics_token": SecretStr("scrape-secret")}
    tokens = settings.model_copy(update=secrets)
    with TestClient(create_app(tokens)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        _scrape(client, Authorization="Bearer scrape-secret")
        _scrape(client, Authorization="Bearer api-secret")
        # The metrics token opens nothing else.
        assert client.get("/jobs", headers={"Authorization": "Bearer scrape-secret"}).status_code == 401
    only_api = settings.model_copy(update={"api_token": SecretStr("api-secret")})
    with TestClient(create_app(only_api)) as client:
        assert client.get("/metrics").status_code == 401
        _scrape(client, Authorization="Bearer api-secret")
