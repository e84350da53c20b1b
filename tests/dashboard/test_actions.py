"""The dashboard's actions, on the real app and database: the confirmation's count, the change
through the store, the operator log, CSRF."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from jobs import db, models
from tests.dashboard.conftest import count_in, csrf_of, operator_actions

JobMaker = Callable[..., list[uuid.UUID]]


def _statuses(database: db.Database, ids: list[uuid.UUID]) -> list[str]:
    with database.readers() as session:
        found = dict(session.execute(select(models.Job.id, models.Job.status).where(models.Job.id.in_(ids))).all())
    return [found[i] for i in ids]


def test_replay_of_one_job_confirms_then_replays_and_records_it(
    client: TestClient, make_jobs: JobMaker, database: db.Database, fetch
) -> None:
    (job_id,) = make_jobs(1, status="failed", kind="fail")
    csrf = csrf_of(client.get(f"/dashboard/jobs/{job_id}").text)
    form = {"csrf": csrf, "job_id": str(job_id), "next": f"/dashboard/jobs/{job_id}"}
    preview = client.post("/dashboard/jobs/actions/replay/preview", data=form)
    assert preview.status_code == 200 and count_in(preview.text) == 1
    assert _statuses(database, [job_id]) == ["failed"]  # the preview changes nothing
    done = client.post(
        "/dashboard/jobs/actions/replay", data={**form, "reason": "fixed the bug"}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"].startswith(f"/dashboard/jobs/{job_id}?done=")
    job, history = fetch(job_id)
    assert job.status == "queued" and history[-1].outcome == "replayed"
    assert history[-1].error_message == "fixed the bug"
    (entry,) = operator_actions(database)
    assert (entry.action, entry.reason, entry.selected, entry.changed) == ("replay", "fixed the bug", 1, 1)
    assert entry.actor.startswith("operator@") and entry.target == {"job_ids": [str(job_id)]}
    assert "replay: 1 of 1 changed (fixed the bug)" in client.get(done.headers["location"]).text


@pytest.mark.brokers  # the replay sends the jobs to the broker
def test_bulk_replay_of_a_selection_counts_only_failed_jobs(
    client: TestClient, make_jobs: JobMaker, database: db.Database
) -> None:
    failed = make_jobs(3, status="failed", kind="fail")
    queued = make_jobs(1)
    csrf = csrf_of(client.get("/dashboard/jobs").text)
    form = {"csrf": csrf, "scope": "selection", "job_id": [str(i) for i in failed[:2] + queued]}
    assert count_in(client.post("/dashboard/jobs/actions/replay/preview", data=form).text) == 2
    nothing = client.post("/dashboard/jobs/actions/replay/preview", data={**form, "job_id": [str(queued[0])]}).text
    assert count_in(nothing) == 0 and 'data-action="confirm" disabled' in nothing
    client.post("/dashboard/jobs/actions/replay", data=form)
    assert _statuses(database, failed + queued) == ["queued", "queued", "failed", "queued"]
    assert (operator_actions(database)[0].selected, operator_actions(database)[0].changed) == (3, 2)


@pytest.mark.brokers  # the replay sends the jobs to the broker
def test_bulk_replay_of_every_job_matching_the_filter(
    client: TestClient, make_jobs: JobMaker, database: db.Database
) -> None:
    matching = make_jobs(7, status="failed", kind="fail", error_type="ValueError", error_message="bad input 7")
    other = make_jobs(2, status="failed", kind="fail")
    csrf = csrf_of(client.get("/dashboard/jobs").text)
    form = {
        "csrf": csrf,
        "scope": "filter",
        "kind": "fail",
        "error_type": "ValueError",
        "since": "1h",
        "next": "/dashboard/jobs",
    }
    preview = client.post("/dashboard/jobs/actions/replay/preview", data=form).text
    assert count_in(preview) == 7
    # The confirmation carries the filter with its times made absolute.
    since = re.search(r'name="since" value="([^"]+)"', preview)
    assert since and since.group(1)[:4].isdigit()
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', preview))
    client.post("/dashboard/jobs/actions/replay", data={**hidden, "reason": "upstream fixed"})
    assert set(_statuses(database, matching)) == {"queued"} and set(_statuses(database, other)) == {"failed"}
    entry = operator_actions(database)[0]
    assert (entry.selected, entry.changed) == (7, 7) and entry.target["filter"]["error_type"] == "ValueError"


def test_retry_now_sends_a_retrying_job_at_once(
    client: TestClient, make_jobs: JobMaker, database: db.Database, queued_messages
) -> None:
    (job_id,) = make_jobs(1, status="retrying")
    before = queued_messages()
    csrf = csrf_of(client.get(f"/dashboard/jobs/{job_id}").text)
    form = {"csrf": csrf, "job_id": str(job_id)}
    assert count_in(client.post("/dashboard/jobs/actions/retry_now/preview", data=form).text) == 1
    client.post("/dashboard/jobs/actions/retry_now", data=form)
    with database.readers() as session:
        job = session.get(models.Job, job_id)
        assert job is not None and job.next_retry_at is not None and job.next_retry_at <= job.enqueued_at  # type: ignore[operator]
    assert queued_messages() == before + 1


def test_cancel_a_batch_from_its_page(client: TestClient, make_records, database: db.Database) -> None:
    from jobs.kinds.batches import service as batches

    _, record_ids = make_records([{"name": "a"}])
    with db.session_scope(database.sessions) as session:
        batch, plan_job = batches.create_batch(session, "validate", record_ids=record_ids)
        batch_id = batch.id
    csrf = csrf_of(client.get("/dashboard/batches").text)
    url = f"/dashboard/batch/{batch_id}/actions/cancel"
    preview = client.post(f"{url}/preview", data={"csrf": csrf}).text
    assert "Cancel batch" in preview and count_in(preview) == 1  # its plan job, not started
    done = client.post(
        url, data={"csrf": csrf, "reason": "wrong file", "next": "/dashboard/batches"}, follow_redirects=False
    )
    assert done.status_code == 303
    assert _statuses(database, [plan_job.id]) == ["cancelled"]
    entry = operator_actions(database)[0]
    assert (entry.action, entry.changed, entry.reason) == ("batch.cancel", 1, "wrong file")  # its plan job
    assert 'data-action="batch-cancel"' not in client.get("/dashboard/batches").text  # finished: no button
    again = client.post(url, data={"csrf": csrf})
    assert again.status_code == 409
    assert client.post("/dashboard/batch/not-a-uuid/actions/cancel", data={"csrf": csrf}).status_code == 404


def test_a_post_without_the_csrf_token_is_refused(client: TestClient, make_jobs: JobMaker, database) -> None:
    (job_id,) = make_jobs(1, status="failed", kind="fail")
    client.get("/dashboard/")  # a session, with its token
    for csrf in ["", "forged"]:
        answer = client.post("/dashboard/jobs/actions/replay", data={"csrf": csrf, "job_id": str(job_id)})
        assert answer.status_code == 403 and "CSRF" in answer.text
    fresh = TestClient(client.app)  # no session cookie at all
    assert fresh.post("/dashboard/jobs/actions/replay", data={"csrf": "x", "job_id": str(job_id)}).status_code == 403
    assert _statuses(database, [job_id]) == ["failed"] and operator_actions(database) == []


def test_an_unknown_action_is_404(client: TestClient) -> None:
    csrf = csrf_of(client.get("/dashboard/jobs").text)
    assert client.post("/dashboard/jobs/actions/explode/preview", data={"csrf": csrf}).status_code == 404
    assert client.post("/dashboard/queue/default/actions/explode", data={"csrf": csrf}).status_code == 404


def test_an_action_goes_back_only_into_the_dashboard(client: TestClient, make_jobs: JobMaker) -> None:
    (job_id,) = make_jobs(1, status="failed", kind="fail")
    csrf = csrf_of(client.get("/dashboard/jobs").text)
    for bad in ["https://evil.example/", "//evil.example/", "/jobs"]:
        done = client.post(
            "/dashboard/jobs/actions/replay",
            data={"csrf": csrf, "job_id": str(job_id), "next": bad},
            follow_redirects=False,
        )
        assert done.headers["location"].startswith("/dashboard/?done=")
