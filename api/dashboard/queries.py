"""What the dashboard's pages read, each an indexed query (see migration 0012): counts by status
and kind (``ix_jobs_status_kind``) and by queue (``ix_jobs_status_queue_enqueued_at``), the last
hour's finishes (``ix_jobs_finished_at_status``), failure groups and running jobs (by status),
and newest-first keyset pages of batches, files and events (``ix_<table>_created_at_id``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, func, literal, select, tuple_
from sqlalchemy.orm import Session

from jobs import models, registry
from jobs.kinds.batches import service as batches
from jobs.kinds.batches.models import Batch
from jobs.kinds.events.models import Event
from jobs.kinds.files.models import File
from jobs.models import JobStatus, UTCDateTime
from jobs.scheduling.models import ScheduleFire
from jobs.store.reading import _decode_cursor, _encode_cursor

_Job = models.Job


@dataclasses.dataclass
class QueueRow:
    """One queue: its jobs by status, how long its oldest queued job has waited, whether it is paused."""

    name: str
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    oldest_queued_at: dt.datetime | None = None
    paused_at: dt.datetime | None = None
    pause_reason: str | None = None

    @property
    def paused(self) -> bool:
        return self.paused_at is not None


def counts_by_kind(session: Session) -> dict[str, dict[str, int]]:
    """``{kind: {status: count}}``."""
    query = select(_Job.kind, _Job.status, func.count()).group_by(_Job.status, _Job.kind)
    table: dict[str, dict[str, int]] = {}
    for kind, status, count in session.execute(query):
        table.setdefault(kind, {})[status] = count
    return dict(sorted(table.items()))


#: The states the queues are counted in: all but those a job ends in for good after running, which
#: are most of the table (counting them by queue would read all of it; they are counted by kind).
QUEUE_STATUSES = tuple(s.value for s in JobStatus if s not in (JobStatus.SUCCEEDED, JobStatus.CANCELLED))


def queues(session: Session, *, idle: bool = False) -> list[QueueRow]:
    """Every queue that has jobs in :data:`QUEUE_STATUSES` or is paused (with ``idle``, also those
    the job kinds use and have no job in): its counts in each state, its oldest queued job (one
    range of ``ix_jobs_status_queue_enqueued_at`` per state), and its pause (``queue_pauses``)."""
    query = (
        select(_Job.status, _Job.queue, func.count(), func.min(_Job.enqueued_at))
        .where(_Job.status.in_(QUEUE_STATUSES))
        .group_by(_Job.status, _Job.queue)
    )
    rows: dict[str, QueueRow] = {name: QueueRow(name) for name in registry.of(session).queues()} if idle else {}
    for status, queue, count, oldest in session.execute(query):
        row = rows.setdefault(queue, QueueRow(queue))
        row.counts[status] = count
        if status == JobStatus.QUEUED:
            row.oldest_queued_at = oldest  # min() keeps the column's type: a UTC-aware datetime
    for pause in session.scalars(select(models.QueuePause)):
        row = rows.setdefault(pause.queue, QueueRow(pause.queue))
        row.paused_at, row.pause_reason = pause.paused_at, pause.reason
    return [rows[name] for name in sorted(rows)]


def last_fires(session: Session) -> dict[str, dt.datetime]:
    """Each schedule's latest fire, timed or run now (a range of ``schedule_fires``' unique index per
    schedule)."""
    query = select(ScheduleFire.schedule_name, func.max(ScheduleFire.fire_at)).group_by(ScheduleFire.schedule_name)
    return {name: at for name, at in session.execute(query)}


@dataclasses.dataclass(frozen=True)
class Minute:
    """Jobs that finished in one minute."""

    at: dt.datetime
    succeeded: int
    failed: int


def finished_per_minute(session: Session, *, now: dt.datetime, minutes: int = 60) -> list[Minute]:
    """Jobs succeeded and failed in each of the last ``minutes`` minutes, oldest first."""
    start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=minutes - 1)
    bucket = _minute(session)
    query = (
        select(bucket, _Job.status, func.count())
        .where(_Job.finished_at >= start, _Job.status.in_([JobStatus.SUCCEEDED.value, JobStatus.FAILED.value]))
        .group_by(bucket, _Job.status)
    )
    found: dict[tuple[str, str], int] = {}
    for minute, status, count in session.execute(query):
        found[(_minute_key(minute), status)] = count
    slots = [start + dt.timedelta(minutes=i) for i in range(minutes)]
    return [
        Minute(
            slot,
            found.get((_minute_key(slot), JobStatus.SUCCEEDED.value), 0),
            found.get((_minute_key(slot), JobStatus.FAILED.value), 0),
        )
        for slot in slots
    ]


def _minute(session: Session) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "sqlite":
        # SQLite keeps UTC as naive text ("2026-12-07 10:13:18.123456").
        return func.strftime("%Y-%m-%d %H:%M", _Job.finished_at)
    return func.to_char(func.timezone("UTC", _Job.finished_at), "YYYY-MM-DD HH24:MI")


def _minute_key(value: dt.datetime | str) -> str:
    if isinstance(value, str):
        return value
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")


@dataclasses.dataclass(frozen=True)
class FailureGroup:
    """Failed jobs of one kind with one error type."""

    kind: str
    error_type: str | None
    count: int
    first_seen: dt.datetime | None
    last_seen: dt.datetime | None
    sample_message: str | None


def failure_groups(session: Session) -> list[FailureGroup]:
    """Failed jobs grouped by (kind, error type), largest group first."""
    query = (
        select(
            _Job.kind,
            _Job.error_type,
            func.count(),
            func.min(_Job.finished_at),
            func.max(_Job.finished_at),
            func.max(_Job.error_message),
        )
        .where(_Job.status == JobStatus.FAILED.value)
        .group_by(_Job.kind, _Job.error_type)
        .order_by(func.count().desc(), _Job.kind)
    )
    return [
        FailureGroup(kind, error_type, count, first, last, (message or "")[:200] or None)
        for kind, error_type, count, first, last, message in session.execute(query)
    ]


def running_jobs(session: Session, *, limit: int = 500) -> list[models.Job]:
    """Running jobs by worker, the lease closest to expiry first within each."""
    query = (
        select(_Job)
        .where(_Job.status == JobStatus.RUNNING.value)
        .order_by(_Job.worker_id, _Job.lease_expires_at)
        .limit(limit)
    )
    return list(session.scalars(query))


Row = TypeVar("Row", Batch, File, Event)


def page_of(
    session: Session, model: type[Row], *, limit: int = 20, cursor: str | None = None
) -> tuple[list[Row], str | None]:
    """Rows of ``model`` (batches, files, events) newest first, a page at a time, and the next cursor.

    Raises:
        InvalidCursor: ``cursor`` was not made here.
    """
    created_at: Any = model.created_at
    key: Any = model.id
    query = select(model).order_by(created_at.desc(), key.desc()).limit(limit + 1)
    if cursor is not None:
        after, after_id = _decode_cursor(cursor)
        query = query.where(
            tuple_(created_at, key) < tuple_(literal(after, UTCDateTime()), literal(after_id, key.type))
        )
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], _encode_cursor(last.created_at, last.id)


def batch_progress(session: Session, rows: Sequence[Batch]) -> list[batches.Progress]:
    """Each batch's progress (percent, rate, a sample of failed records)."""
    return [batches.get_progress(session, batch.id) for batch in rows]


def job_statuses(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The status of each of ``job_ids`` that exists (a pruned job has none)."""
    if not job_ids:
        return {}
    query = select(_Job.id, _Job.status).where(_Job.id.in_(job_ids))
    return {job_id: status for job_id, status in session.execute(query)}


def statuses() -> list[str]:
    """Every job status, in the enum's order: the columns and filters of the pages (a new state
    shows up by itself)."""
    return [status.value for status in JobStatus]
