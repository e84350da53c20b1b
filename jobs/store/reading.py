"""Reading jobs: one with its history, pages of them, counts."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import func, literal, select, tuple_
from sqlalchemy.orm import Session

from jobs import db, errors, models
from jobs.models import JobStatus, UTCDateTime


def get_job(session: Session, job_id: uuid.UUID) -> models.Job:
    """The job with ``job_id``.

    Raises:
        JobNotFound: there is none.
    """
    return db.get_or_raise(session, models.Job, job_id, errors.JobNotFound, what="job")


def missing_jobs(session: Session, job_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Those of ``job_ids`` no job has, in their order (each once)."""
    wanted = list(dict.fromkeys(job_ids))
    if not wanted:
        return []
    found = set(session.scalars(select(models.Job.id).where(models.Job.id.in_(wanted))))
    return [job_id for job_id in wanted if job_id not in found]


def list_attempts(session: Session, job_id: uuid.UUID) -> list[models.JobAttempt]:
    """A job's history, oldest first."""
    return list(
        session.scalars(
            select(models.JobAttempt).where(models.JobAttempt.job_id == job_id).order_by(models.JobAttempt.id)
        )
    )


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    kind: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[models.Job], str | None]:
    """Jobs newest first, and the cursor of the next page (None on the last).

    Raises:
        InvalidCursor: ``cursor`` was not made by this function.
    """
    query = select(models.Job).order_by(models.Job.created_at.desc(), models.Job.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(models.Job.status == status)
    if kind is not None:
        query = query.where(models.Job.kind == kind)
    if cursor is not None:
        created_at, job_id = _decode_cursor(cursor)
        query = query.where(
            tuple_(models.Job.created_at, models.Job.id)
            < tuple_(literal(created_at, UTCDateTime()), literal(job_id, models.Job.id.type))
        )
    jobs = list(session.scalars(query))
    if len(jobs) <= limit:
        return jobs, None
    last = jobs[limit - 1]
    return jobs[:limit], _encode_cursor(last.created_at, last.id)


def _encode_cursor(created_at: dt.datetime, job_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, job_id = raw.split("|")
        parsed = dt.datetime.fromisoformat(created_at)
        if parsed.tzinfo is None:
            raise ValueError("naive time")
        return parsed, uuid.UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise errors.InvalidCursor() from exc


def select_failed_jobs(
    session: Session,
    *,
    job_ids: Sequence[uuid.UUID] = (),
    kind: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    error_contains: str | None = None,
    error_type: str | None = None,
    batch_id: str | None = None,
    limit: int | None = None,
) -> list[models.Job]:
    """The ``failed`` jobs matching every given filter, oldest failure first (what a replay takes)."""
    query = (
        select(models.Job).where(models.Job.status == JobStatus.FAILED).order_by(models.Job.finished_at, models.Job.id)
    )
    if job_ids:
        query = query.where(models.Job.id.in_(job_ids))
    if kind is not None:
        query = query.where(models.Job.kind == kind)
    if since is not None:
        query = query.where(models.Job.finished_at >= since)
    if until is not None:
        query = query.where(models.Job.finished_at < until)
    if error_contains is not None:
        query = query.where(models.Job.error_message.contains(error_contains, autoescape=True))
    if error_type is not None:
        query = query.where(models.Job.error_type == error_type)
    if batch_id is not None:
        query = query.where(models.Job.args["batch_id"].as_string() == batch_id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count_jobs(session: Session) -> list[tuple[str, str, int]]:
    """How many jobs there are by kind and status."""
    query = (
        select(models.Job.kind, models.Job.status, func.count())
        .group_by(models.Job.kind, models.Job.status)
        .order_by(models.Job.kind, models.Job.status)
    )
    return [(kind, status, count) for kind, status, count in session.execute(query)]


def oldest_queued_at(session: Session) -> dt.datetime | None:
    """When the job waiting longest was queued (None when nothing waits)."""
    return session.scalar(select(func.min(models.Job.enqueued_at)).where(models.Job.status == JobStatus.QUEUED))
