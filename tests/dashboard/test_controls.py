"""The dashboard's cancel, queue pause and resume, and schedules, on the real app and database:
each goes through the store function the API and ``jobctl`` use, and is recorded in the operator log."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from jobs import db, models
from jobs.scheduling import service as schedules
from jobs.scheduling.models import Schedule
from jobs.scheduling.timing import Timing
from tests.dashboard.conftest import READONLY_TOKEN, count_in, csrf_of, operator_actions

JobMaker = Callable[..., list[uuid.UUID]]


def _jobs(database: db.Database, ids: list[uuid.UUID]) -> list[models.Job]:
    with database.readers() as session:
        found = {job.id: job for job in session.scalars(select(models.Job).where(models.Job.id.in_(ids)))}
    return [found[i] for i in ids]


NIGHTLY = Timing(cron="0 3 * * *", timezone="Europe/Paris")


def _make_schedule(database: db.Database, name: str = "nightly", when: Timing = NIGHTLY) -> None:
    with db.session_scope(database.sessions) as session:
        schedules.create_schedule(session, name, "noop", when)


def _schedule(database: db.Database, name: str) -> Schedule | None:
    with database.readers() as session:
        return session.get(Schedule, name)


def test_cancel_of_a_queued_job_ends_it_cancelled_and_logs_it(
    client: TestClient, make_jobs: JobMaker, database: db.Database
) -> None:
    (job_id,) = make_jobs(1)
    page = client.get(f"/dashboard/jobs/{job_id}").text
    assert 'class="danger" data-action="cancel"' in page
    form = {"csrf": csrf_of(page), "job_id": str(job_id), "next": f"/dashboard/jobs/{job_id}"}
    preview = client.post("/dashboard/jobs/actions/cancel/preview", data=form).text
    assert count_in(preview) == 1 and "asked to stop" in preview and 'name="reason"' in preview
    assert _jobs(database, [job_id])[0].status == "queued"  # the preview changes nothing
    done = client.post("/dashboard/jobs/actions/cancel", data={**form, "reason": "wrong args"}, follow_redirects=False)
    assert done.status_code == 303
    (job,) = _jobs(database, [job_id])
    assert (job.status, job.cancel_reason) == ("cancelled", "wrong args") and job.finished_at is not None
    (entry,) = operator_actions(database)
    assert (entry.action, entry.reason, entry.selected, entry.changed) == ("cancel", "wrong args", 1, 1)
    assert "cancel: 1 of 1 changed (wrong args)" in client.get(done.headers["location"]).text
    assert 'data-action="cancel"' not in client.get(f"/dashboard/jobs/{job_id}").text  # finished: no button


def test_bulk_cancel_counts_the_cancellable_jobs_and_asks_running_ones_to_stop(
    client: TestClient, make_jobs: JobMaker, database: db.Database
) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    waiting = make_jobs(2) + make_jobs(1, status="retrying") + make_jobs(1, status="scheduled", run_at=later)
    (running,) = make_jobs(1, status="running")
    (failed,) = make_jobs(1, status="failed", kind="fail")
    csrf = csrf_of(client.get("/dashboard/jobs").text)
    form = {"csrf": csrf, "scope": "selection", "job_id": [str(i) for i in [*waiting, running, failed]]}
    assert count_in(client.post("/dashboard/jobs/actions/cancel/preview", data=form).text) == 5
    client.post("/dashboard/jobs/actions/cancel", data=form)
    assert {job.status for job in _jobs(database, waiting)} == {"cancelled"}
    stopping, untouched = _jobs(database, [running, failed])
    assert stopping.status == "running" and stopping.cancel_requested_at is not None  # its worker ends it
    assert untouched.status == "failed"
    assert (operator_actions(database)[0].selected, operator_actions(database)[0].changed) == (6, 5)


def test_cancel_of_every_job_matching_the_filter(
    client: TestClient, make_jobs: JobMaker, database: db.Database
) -> None:
    slow = make_jobs(4, queue="slow")
    other = make_jobs(2)
    csrf = csrf_of(client.get("/dashboard/jobs?queue=slow").text)
    form = {"csrf": csrf, "scope": "filter", "queue": "slow", "next": "/dashboard/jobs?queue=slow"}
    preview = client.post("/dashboard/jobs/actions/cancel/preview", data=form).text
    assert count_in(preview) == 4
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', preview))
    client.post("/dashboard/jobs/actions/cancel", data=hidden)
    assert {job.status for job in _jobs(database, slow)} == {"cancelled"}
    assert {job.status for job in _jobs(database, other)} == {"queued"}
    entry = operator_actions(database)[0]
    assert (entry.action, entry.selected, entry.changed, entry.target) == (
        "cancel",
        4,
        4,
        {"filter": {"queue": "slow"}},
    )


@pytest.mark.brokers  # the resume (or replay) sends the waiting jobs to the broker
def test_pause_and_resume_of_a_queue(client: TestClient, make_jobs: JobMaker, database: db.Database) -> None:
    make_jobs(2, queue="slow")
    page = client.get("/dashboard/queues").text
    assert 'data-queue="default"' in page  # a kind's queue, even without jobs
    csrf = csrf_of(page)
    url = "/dashboard/queue/slow/actions"
    assert "Pause" in client.post(f"{url}/pause/preview", data={"csrf": csrf}).text
    client.post(f"{url}/pause", data={"csrf": csrf, "reason": "deploy", "next": "/dashboard/queues"})
    with database.readers() as session:
        pause = session.get(models.QueuePause, "slow")
        assert pause is not None and pause.reason == "deploy"
    page = client.get("/dashboard/queues").text
    row = page[page.index('data-queue="slow"') :].split("</tr>")[0]
    assert 'data-paused="true"' in row and 'data-action="queue-resume"' in row and "queue-pause" not in row
    client.post(f"{url}/resume", data={"csrf": csrf})
    with database.readers() as session:
        assert session.get(models.QueuePause, "slow") is None
    assert [(e.action, e.changed, e.target) for e in operator_actions(database)] == [
        ("queue.resume", 1, {"queue": "slow"}),
        ("queue.pause", 1, {"queue": "slow"}),
    ]
    assert client.post("/dashboard/queue/nowhere/actions/pause", data={"csrf": csrf}).status_code == 404


def test_schedules_page_lists_them_and_pause_resume_run_now_and_delete_work(
    client: TestClient, database: db.Database
) -> None:
    assert "no schedules yet" in client.get("/dashboard/schedules").text
    _make_schedule(database)
    _make_schedule(database, "every-minute", Timing(every_seconds=60))
    page = client.get("/dashboard/schedules").text
    assert 'href="/dashboard/schedules" class="active"' in page
    nightly = page[page.index('data-schedule="nightly"') :].split("</tr>")[0]
    assert "0 3 * * *" in nightly and "Europe/Paris" in nightly and 'data-action="schedule-pause"' in nightly
    assert "every 60.0 s" in page and "data-last-fire>-<" in nightly
    csrf = csrf_of(page)
    url = "/dashboard/schedule/nightly/actions"
    client.post(f"{url}/pause", data={"csrf": csrf, "reason": "maintenance"})
    schedule = _schedule(database, "nightly")
    assert schedule is not None and schedule.paused
    nightly = client.get("/dashboard/schedules").text.split('data-schedule="nightly"')[1].split("</tr>")[0]
    assert 'data-paused="true"' in nightly and 'data-action="schedule-resume"' in nightly
    client.post(f"{url}/resume", data={"csrf": csrf})
    schedule = _schedule(database, "nightly")
    assert schedule is not None and not schedule.paused
    with database.readers() as session:
        before = session.scalar(select(func.count()).select_from(models.Job).where(models.Job.kind == "noop"))
    client.post(f"{url}/run", data={"csrf": csrf})
    with database.readers() as session:
        after = session.scalar(select(func.count()).select_from(models.Job).where(models.Job.kind == "noop"))
        assert [fire.manual for fire in schedules.list_fires(session, "nightly")] == [True]
    assert after == (before or 0) + 1
    nightly = client.get("/dashboard/schedules").text.split('data-schedule="nightly"')[1].split("</tr>")[0]
    assert re.search(r"data-last-fire>\d+ s ago<", nightly), nightly  # was "-" before the run
    client.post(f"{url}/delete", data={"csrf": csrf})
    assert _schedule(database, "nightly") is None
    assert [(e.action, e.changed, e.reason) for e in operator_actions(database)] == [
        ("schedule.delete", 1, None),
        ("schedule.run", 1, None),
        ("schedule.resume", 1, None),
        ("schedule.pause", 1, "maintenance"),
    ]
    assert client.post(f"{url}/run", data={"csrf": csrf}).status_code == 404


def test_read_only_sees_no_new_buttons_and_gets_403_on_each_new_action(
    guarded_client: TestClient, make_jobs: JobMaker, database: db.Database
) -> None:
    (job_id,) = make_jobs(1)
    _make_schedule(database)
    csrf = csrf_of(guarded_client.get("/dashboard/login").text)
    guarded_client.post("/dashboard/login", data={"csrf": csrf, "token": READONLY_TOKEN})
    pages = [guarded_client.get(f"/dashboard/{path}").text for path in ["queues", "schedules", f"jobs/{job_id}"]]
    assert "nightly" in pages[1] and all("data-action=" not in page for page in pages)
    csrf = csrf_of(pages[0])
    posts = [("/dashboard/jobs/actions/cancel", {"job_id": str(job_id)})]
    posts += [(f"/dashboard/queue/default/actions/{name}", {}) for name in ["pause", "resume"]]
    posts += [(f"/dashboard/schedule/nightly/actions/{name}", {}) for name in ["pause", "resume", "run", "delete"]]
    for url, form in posts:
        for path in [f"{url}/preview", url]:
            answer = guarded_client.post(path, data={"csrf": csrf, **form})
            assert answer.status_code == 403 and "read-only" in answer.text, path
    schedule = _schedule(database, "nightly")
    assert schedule is not None and not schedule.paused and _jobs(database, [job_id])[0].status == "queued"
    assert operator_actions(database) == []
    with database.readers() as session:
        assert session.get(models.QueuePause, "default") is None
