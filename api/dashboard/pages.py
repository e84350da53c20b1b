"""The dashboard's pages (GET): overview, jobs, a job, failures, running, queues, schedules,
batches, files, events, the operator log. Each reads through an indexed query and renders a template; an htmx poll
of a page gets its live region only (see :func:`api.dashboard.rendering.render`)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from api.dashboard import filters, queries
from api.dashboard.auth import ViewerDep
from api.dashboard.rendering import render
from api.deps import ReadSessionDep, get_database
from api.routes import health
from jobs import db, operator_log, store
from jobs.kinds.batches.models import Batch
from jobs.kinds.events.models import Event
from jobs.kinds.files.models import File
from jobs.models import AttemptOutcome
from jobs.scheduling import service as schedules
from jobs.store import filtering

router = APIRouter()

Cursor = Annotated[str | None, Query(max_length=200)]
#: Jobs on one page of the list.
PAGE_SIZE = 50


@router.get("/")
def overview(
    request: Request,
    viewer: ViewerDep,
    session: ReadSessionDep,
    database: Annotated[db.Database, Depends(get_database)],
) -> Response:
    """Jobs by status and kind and by queue, the last hour's finishes, health."""
    now = dt.datetime.now(dt.UTC)
    by_kind = queries.counts_by_kind(session)
    totals: dict[str, int] = {}
    for counts in by_kind.values():
        for status, count in counts.items():
            totals[status] = totals.get(status, 0) + count
    minutes = queries.finished_per_minute(session, now=now)
    return render(
        request,
        viewer,
        "overview.html",
        by_kind=by_kind,
        totals=totals,
        queues=queries.queues(session),
        minutes=minutes,
        chart=_chart(minutes),
        problems=health.check(request, database),
    )


def _chart(minutes: list[queries.Minute]) -> dict[str, object]:
    """Bars of the per-minute chart (an inline SVG): x, and heights of succeeded and failed."""
    width, height = 600, 120
    top = max([m.succeeded + m.failed for m in minutes] + [1])
    step = width / len(minutes)
    bars = []
    for i, minute in enumerate(minutes):
        ok = height * minute.succeeded / top
        bad = height * minute.failed / top
        bars.append({"x": round(i * step, 1), "ok": round(ok, 1), "bad": round(bad, 1), "minute": minute})
    return {"width": width, "height": height, "bar": round(step * 0.8, 1), "top": top, "bars": bars}


@router.get("/jobs")
def jobs_list(request: Request, viewer: ViewerDep, session: ReadSessionDep, cursor: Cursor = None) -> Response:
    """Jobs matching the filter in the URL, newest first, a page at a time."""
    raw = filters.raw_filter(request.query_params)
    job_filter = filters.parse_filter(request.query_params, now=dt.datetime.now(dt.UTC))
    jobs, next_cursor = filtering.page_jobs(session, job_filter, limit=PAGE_SIZE, cursor=cursor)
    return render(
        request, viewer, "jobs.html", jobs=jobs, next_cursor=next_cursor, raw=raw, cursor=cursor, filtered=bool(raw)
    )


@router.get("/jobs/{job_id}")
def job_detail(job_id: uuid.UUID, request: Request, viewer: ViewerDep, session: ReadSessionDep) -> Response:
    """A job: its args, every attempt of every run, its lease and claim, replay reasons."""
    job = store.get_job(session, job_id)
    attempts = store.list_attempts(session, job_id)
    runs: dict[int, list[object]] = {}
    for attempt in attempts:
        runs.setdefault(attempt.run, []).append(attempt)
    return render(
        request,
        viewer,
        "job.html",
        job=job,
        runs=runs,
        replayed=AttemptOutcome.REPLAYED.value,
        batch_id=job.args.get("batch_id") if isinstance(job.args, dict) else None,
    )


@router.get("/failures")
def failures(request: Request, viewer: ViewerDep, session: ReadSessionDep) -> Response:
    """Failed jobs grouped by (kind, error type)."""
    return render(request, viewer, "failures.html", groups=queries.failure_groups(session))


@router.get("/running")
def running(request: Request, viewer: ViewerDep, session: ReadSessionDep) -> Response:
    """Running jobs by worker, with their leases (those about to expire stand out)."""
    jobs = queries.running_jobs(session)
    workers: dict[str, list[object]] = {}
    for job in jobs:
        workers.setdefault(job.worker_id or "?", []).append(job)
    lease_seconds = request.app.state.settings.lease_seconds
    # The heartbeat renews a lease every third of it: a lease with less than that left is late.
    return render(request, viewer, "running.html", workers=workers, late_seconds=lease_seconds / 3)


@router.get("/queues")
def queue_list(request: Request, viewer: ViewerDep, session: ReadSessionDep) -> Response:
    """Every queue: its jobs by status, its oldest queued job, whether it is paused."""
    return render(request, viewer, "queues.html", queues=queries.queues(session, idle=True))


@router.get("/schedules")
def schedule_list(request: Request, viewer: ViewerDep, session: ReadSessionDep) -> Response:
    """Every schedule: its timing, next and last fire, whether it is paused."""
    rows = schedules.list_schedules(session)
    fires = queries.last_fires(session)
    # Its own last_fire_at counts its timed fires; a run now is only in schedule_fires.
    last: dict[str, dt.datetime] = {}
    for row in rows:
        times = [t for t in (row.last_fire_at, fires.get(row.name)) if t is not None]
        if times:
            last[row.name] = max(times)
    return render(request, viewer, "schedules.html", schedules=rows, last_fire=last)


@router.get("/batches")
def batch_list(request: Request, viewer: ViewerDep, session: ReadSessionDep, cursor: Cursor = None) -> Response:
    """Batches newest first, with progress, rate and a sample of failed records."""
    rows, next_cursor = queries.page_of(session, Batch, cursor=cursor)
    progress = queries.batch_progress(session, rows)
    return render(request, viewer, "batches.html", progress=progress, next_cursor=next_cursor, cursor=cursor)


@router.get("/files")
def file_list(request: Request, viewer: ViewerDep, session: ReadSessionDep, cursor: Cursor = None) -> Response:
    """Uploaded files newest first, with their import progress."""
    rows, next_cursor = queries.page_of(session, File, cursor=cursor)
    return render(request, viewer, "files.html", files=rows, next_cursor=next_cursor, cursor=cursor)


@router.get("/events")
def event_list(request: Request, viewer: ViewerDep, session: ReadSessionDep, cursor: Cursor = None) -> Response:
    """Events newest first, each with its handlers' jobs and their status."""
    rows, next_cursor = queries.page_of(session, Event, cursor=cursor)
    job_ids = [uuid.UUID(entry["job_id"]) for event in rows for entry in event.handler_jobs]
    return render(
        request,
        viewer,
        "events.html",
        events=rows,
        job_status=queries.job_statuses(session, job_ids),
        next_cursor=next_cursor,
        cursor=cursor,
        uuid=uuid.UUID,
    )


@router.get("/log")
def action_log(request: Request, viewer: ViewerDep, session: ReadSessionDep) -> Response:
    """What operators did, newest first."""
    return render(request, viewer, "log.html", entries=operator_log.recent_actions(session, limit=100))
