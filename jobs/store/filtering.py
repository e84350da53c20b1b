"""Jobs matching a filter (status, kind, queue, time range, error, batch): a page of them newest
first, how many, and their IDs (what a bulk action takes). The dashboard's lists and its actions on
"every job matching the filter" read through here.

Each filter narrows an indexed range (migration 0012): status, kind and error type lead an index
that goes on with ``(created_at, id)``, so a page is a walk down one index whichever of them is
set; a batch's jobs come as a SELECT of their IDs (``among``: through ``batch_chunks`` by batch).
The error text is searched in the jobs that have an error (a partial index of them, newest first):
a rare text still reads all of those.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import TypeVarTuple

from sqlalchemy import ColumnElement, Select, func, literal, select, tuple_
from sqlalchemy.orm import Session, defer

from jobs import models
from jobs.models import JobStatus, UTCDateTime
from jobs.store.reading import _decode_cursor, _encode_cursor

_Job = models.Job
Ts = TypeVarTuple("Ts")


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """Which jobs: every field given must match (None: any)."""

    status: JobStatus | None = None
    kind: str | None = None
    queue: str | None = None
    #: Created at or after / before.
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    error_type: str | None = None
    #: Text the error message contains.
    error: str | None = None
    #: The batch whose jobs to take (its plan and its chunks): ``among`` selects them.
    batch: uuid.UUID | None = None
    #: A SELECT of the job IDs to take from (the caller's: the core knows no batch).
    among: Select[uuid.UUID] | None = dataclasses.field(default=None, compare=False)

    def conditions(self) -> Iterator[ColumnElement[bool]]:
        """The WHERE conditions of this filter."""
        if self.status is not None:
            yield _Job.status == self.status.value
        if self.kind is not None:
            yield _Job.kind == self.kind
        if self.queue is not None:
            yield _Job.queue == self.queue
        if self.since is not None:
            yield _Job.created_at >= self.since
        if self.until is not None:
            yield _Job.created_at < self.until
        if self.error_type is not None:
            yield _Job.error_type == self.error_type
        if self.error is not None:
            # A job has an error message exactly when it has an error type: saying so lets the
            # walk take the jobs with an error only (ix_jobs_errored_created_at_id).
            yield _Job.error_type.is_not(None)
            yield _Job.error_message.contains(self.error, autoescape=True)
        if self.among is not None:
            yield _Job.id.in_(self.among)

    def where(self, query: Select[*Ts]) -> Select[*Ts]:
        """``query`` narrowed to this filter."""
        return query.where(*self.conditions())

    def narrowed(self, statuses: tuple[JobStatus, ...]) -> list[JobFilter]:
        """This filter for each of ``statuses`` it allows (none: it allows none of them)."""
        if self.status is not None:
            return [self] if self.status in statuses else []
        return [dataclasses.replace(self, status=status) for status in statuses]


def page_jobs(
    session: Session, job_filter: JobFilter, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[models.Job], str | None]:
    """The jobs matching ``job_filter``, newest first, a page at a time: the page and the cursor of
    the next one (None on the last). Tracebacks and args are not loaded.

    Raises:
        InvalidCursor: ``cursor`` was not made by this function or :func:`jobs.store.list_jobs`.
    """
    jobs = list(session.scalars(list_query(job_filter, limit=limit + 1, cursor=cursor)))
    if len(jobs) <= limit:
        return jobs, None
    last = jobs[limit - 1]
    return jobs[:limit], _encode_cursor(last.created_at, last.id)


def list_query(job_filter: JobFilter, *, limit: int, cursor: str | None = None) -> Select[models.Job]:
    """The SELECT of :func:`page_jobs` (``limit`` rows after ``cursor``), newest first."""
    query = (
        job_filter.where(select(_Job))
        .options(defer(_Job.error_traceback), defer(_Job.args))
        .order_by(_Job.created_at.desc(), _Job.id.desc())
        .limit(limit)
    )
    if cursor is not None:
        created_at, job_id = _decode_cursor(cursor)
        query = query.where(
            tuple_(_Job.created_at, _Job.id) < tuple_(literal(created_at, UTCDateTime()), literal(job_id, _Job.id.type))
        )
    return query


def count_matching(session: Session, job_filter: JobFilter, statuses: tuple[JobStatus, ...]) -> int:
    """How many jobs match ``job_filter`` and are in one of ``statuses``."""
    total = 0
    for narrowed in job_filter.narrowed(statuses):
        total += session.scalar(narrowed.where(select(func.count()).select_from(_Job))) or 0
    return total


def matching_ids(
    session: Session, job_filter: JobFilter, statuses: tuple[JobStatus, ...], *, chunk_size: int = 500
) -> Iterator[list[uuid.UUID]]:
    """The IDs of the jobs matching ``job_filter`` in one of ``statuses``, oldest first, in lists of
    at most ``chunk_size`` (keyset pages: a job whose status changes meanwhile is not read twice)."""
    for narrowed in job_filter.narrowed(statuses):
        after: tuple[dt.datetime, uuid.UUID] | None = None
        while True:
            query = narrowed.where(select(_Job.created_at, _Job.id)).order_by(_Job.created_at, _Job.id)
            if after is not None:
                query = query.where(
                    tuple_(_Job.created_at, _Job.id)
                    > tuple_(literal(after[0], UTCDateTime()), literal(after[1], _Job.id.type))
                )
            rows = session.execute(query.limit(chunk_size)).all()
            if not rows:
                break
            yield [row.id for row in rows]
            after = (rows[-1].created_at, rows[-1].id)
