"""Every page of the dashboard, on the real app and database: what it shows, its filters and pages."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from jobs import db, models

JobMaker = Callable[..., list[uuid.UUID]]


def _job_rows(html: str) -> list[str]:
    """The job IDs a jobs list shows, in its order."""
    return re.findall(r'name="job_id" value="([0-9a-f-]{36})"', html)


def test_overview_counts_jobs_by_status_kind_and_queue(client: TestClient, make_jobs: JobMaker) -> None:
    make_jobs(3, status="queued")
    make_jobs(2, status="failed", kind="fail")
    make_jobs(1, status="succeeded")
    page = client.get("/dashboard/")
    assert page.status_code == 200
    html = page.text
    assert 'data-status="queued">3<' in html
    assert 'data-status="failed">2<' in html
    assert 'data-status="succeeded">1<' in html
    assert "database ok" in html and "broker ok" in html
    assert "<svg" in html and 'class="bad"' in html  # the chart has the failures of this minute
    assert "/dashboard/jobs?queue=default" in html


def test_live_refresh_gets_only_the_live_region(client: TestClient, make_jobs: JobMaker) -> None:
    make_jobs(1)
    full = client.get("/dashboard/").text
    assert "<html" in full and 'hx-trigger="every 3s [jrLive()]"' in full
    partial = client.get("/dashboard/", headers={"HX-Request": "true", "HX-Target": "live"}).text
    assert "<html" not in partial and partial.lstrip().startswith('<div id="live"')
    assert 'data-status="queued">1<' in partial


def test_jobs_list_filters_by_every_field(client: TestClient, make_jobs: JobMaker, database: db.Database) -> None:
    failed = make_jobs(2, status="failed", kind="fail")
    make_jobs(2, status="queued", kind="noop")
    other_error = make_jobs(1, status="failed", kind="fail", error_type="ValueError", error_message="bad value 42")
    in_queue = make_jobs(1, kind="noop", queue="slow")
    old = make_jobs(1, kind="noop")
    with db.session_scope(database.sessions) as session:
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
        session.execute(update(models.Job).where(models.Job.id.in_(old)).values(created_at=long_ago))

    def shown(**params: str) -> set[str]:
        page = client.get("/dashboard/jobs", params=params)
        assert page.status_code == 200, page.text
        return set(_job_rows(page.text))

    assert shown(status="failed") == {str(i) for i in failed + other_error}
    assert shown(kind="fail", error_type="ValueError") == {str(other_error[0])}
    assert shown(error="value 4") == {str(other_error[0])}
    assert shown(queue="slow") == {str(in_queue[0])}
    assert str(old[0]) not in shown(since="1d") and shown(until="2d") == {str(old[0])}
    assert shown(status="retrying") == set()


def test_jobs_list_filters_by_batch(client: TestClient, make_jobs: JobMaker, make_records, database) -> None:
    from jobs.kinds.batches import service as batches

    _, record_ids = make_records([{"name": "a"}, {"name": "b"}])
    with db.session_scope(database.sessions) as session:
        batch, plan_job = batches.create_batch(session, "validate", record_ids=record_ids, chunk_size=1)
        batch_id = batch.id
    make_jobs(2)
    shown = _job_rows(client.get("/dashboard/jobs", params={"batch": str(batch_id)}).text)
    assert shown == [str(plan_job.id)]


def test_bad_filters_are_a_422_naming_the_value(client: TestClient) -> None:
    assert "no such status" in client.get("/dashboard/jobs", params={"status": "nope"}).text
    assert client.get("/dashboard/jobs", params={"since": "yesterday"}).status_code == 422
    assert client.get("/dashboard/jobs", params={"batch": "x"}).status_code == 422
    assert client.get("/dashboard/jobs", params={"cursor": "garbage"}).status_code == 422


def test_jobs_list_pages_with_a_cursor_newest_first(client: TestClient, make_jobs: JobMaker) -> None:
    ids = [str(i) for i in make_jobs(120)]
    seen: list[str] = []
    url = "/dashboard/jobs?status=queued"
    while url:
        html = client.get(url).text
        seen += _job_rows(html)
        match = re.search(r'href="\?([^"]*cursor=[^"]+)" rel="next"', html)
        url = f"/dashboard/jobs?{match.group(1).replace('&amp;', '&')}" if match else ""
    assert len(seen) == 120 and set(seen) == set(ids)  # three pages, nothing twice, nothing missed


def test_job_detail_shows_args_attempts_and_replay_reasons(client: TestClient, make_job, worker, drain, fetch) -> None:
    job_id = make_job("fail", {"message": "it broke"})
    drain()
    csrf_page = client.get(f"/dashboard/jobs/{job_id}")
    assert csrf_page.status_code == 200
    html = csrf_page.text
    assert "&#34;message&#34;: &#34;it broke&#34;" in html or '"message": "it broke"' in html
    assert html.count('class="badge oc-error"') == 2 and html.count('class="badge oc-failed"') == 1
    assert "Traceback" in html and 'data-action="replay"' in html
    assert fetch(job_id)[0].status == "failed"


def test_job_detail_of_a_missing_job_is_404(client: TestClient) -> None:
    assert client.get(f"/dashboard/jobs/{uuid.uuid4()}").status_code == 404


def test_failures_group_by_kind_and_error_type(client: TestClient, make_jobs: JobMaker) -> None:
    make_jobs(3, status="failed", kind="fail")
    make_jobs(1, status="failed", kind="fail", error_type="ValueError")
    html = client.get("/dashboard/failures").text
    rows = re.findall(r'status=failed&amp;kind=fail&amp;error_type=([\w.]+)">(\d+)</a>', html)
    assert rows == [("tests.kinds.Boom", "3"), ("ValueError", "1")]
    assert html.count('data-action="replay-group"') == 2


def test_running_marks_late_and_expired_leases(settings, database: db.Database, make_jobs: JobMaker) -> None:
    # Hour-long leases: a lease is late with less than 20 minutes left, so each job below stays in
    # its class however slowly the page is served.
    now = dt.datetime.now(dt.UTC)
    leases = {"fresh": dt.timedelta(minutes=50), "late": dt.timedelta(minutes=10), "expired": -dt.timedelta(minutes=10)}
    for left in leases.values():
        make_jobs(1, status="running", worker_id="host:1", claim_token=uuid.uuid4(), lease_expires_at=now + left)
    with TestClient(create_app(settings.model_copy(update={"lease_seconds": 3600}))) as client:
        html = client.get("/dashboard/running").text
    assert "host:1" in html
    assert html.count('<tr class="late">') == 1 and html.count('<tr class="expired">') == 1
    assert html.count('<tr class="">') == 1


def test_queues_list_each_queue_with_its_oldest_queued_job(client: TestClient, make_jobs: JobMaker) -> None:
    make_jobs(2, queue="slow")
    make_jobs(1, status="failed", queue="default")
    html = client.get("/dashboard/queues").text
    assert '/dashboard/jobs?queue=slow&status=queued">2</a>' in html
    assert '/dashboard/jobs?queue=default&status=failed">1</a>' in html


def test_batches_files_and_events_pages_show_progress_and_fan_out(
    client: TestClient, make_records, database: db.Database
) -> None:
    from jobs.kinds.batches import service as batches
    from jobs.kinds.events import outbox

    file_id, record_ids = make_records([{"name": "a"}, {"name": "b"}])
    with db.session_scope(database.sessions) as session:
        batch, _ = batches.create_batch(session, "validate", record_ids=record_ids, chunk_size=1)
        batch_id = batch.id
        payload = {"org_id": "o1", "user_id": "u1", "email": "u1@example.com"}
        event_id = outbox.emit(session, "user_registered", payload).event_id
    html = client.get("/dashboard/batches").text
    assert str(batch_id) in html and 'role="progressbar"' in html and 'data-action="batch-cancel"' in html
    html = client.get("/dashboard/files").text
    assert str(file_id) in html and "2 rows read: 2 imported" in html
    html = client.get("/dashboard/events").text
    assert str(event_id)[:8] in html and "user_registered" in html and "badge st-queued" in html


def test_pages_without_rows_say_so(client: TestClient) -> None:
    for path, text in [
        ("/dashboard/", "no jobs yet"),
        ("/dashboard/jobs", "no jobs match"),
        ("/dashboard/failures", "no failed jobs"),
        ("/dashboard/running", "nothing is running"),
        ("/dashboard/schedules", "no schedules yet"),
        ("/dashboard/batches", "no batches yet"),
        ("/dashboard/files", "no files yet"),
        ("/dashboard/events", "no events yet"),
        ("/dashboard/log", "no actions yet"),
    ]:
        page = client.get(path)
        assert page.status_code == 200 and text in page.text, path


def test_the_static_files_are_served_from_the_package(client: TestClient) -> None:
    htmx = client.get("/dashboard/static/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:200]
    assert client.get("/dashboard/static/dashboard.css").status_code == 200
