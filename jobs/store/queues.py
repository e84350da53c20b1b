"""Flow control: paused queues and per-kind concurrency limits, and what ``GET /queues`` shows.

A paused queue is a row in ``queue_pauses``; the claim refuses every job of it while the row exists
(see :mod:`jobs.store.running`), leaving the job ``queued``, so the row, not a message, is the truth.
Resuming deletes the row and sends the queue's waiting jobs again.

A kind with ``max_running`` is claimed by :func:`claim_limited_job`, which counts the kind's
running jobs and claims only under the limit, one claim of the kind at a time: PostgreSQL takes a
transaction-level advisory lock per kind; SQLite's ``BEGIN IMMEDIATE`` already lets one writer in
at a time. A job refused there stays ``queued``; when a job of the kind ends, its worker sends the
kind's oldest waiting jobs again (:func:`wake_waiting_jobs`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Connection, Select, bindparam, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs import errors, models, registry, sending
from jobs.models import JobStatus
from jobs.store.base import send_again, utcnow

_jobs = models.Job.__table__
_pauses = models.QueuePause.__table__

#: First key of the advisory locks taken per limited kind (the second is the kind's ``hashtext``).
KIND_LOCK_NAMESPACE = 0x6A6F6273  # "jobs"


@dataclasses.dataclass(frozen=True, slots=True)
class QueueInfo:
    """One queue as ``GET /queues`` shows it."""

    name: str
    #: How many jobs of the queue are in each state (states without jobs left out).
    counts: dict[str, int]
    #: How long the job waiting longest has been ``queued`` (None when none waits).
    oldest_queued_seconds: float | None
    paused: bool
    paused_at: dt.datetime | None
    pause_reason: str | None


def list_queues(session: Session) -> list[QueueInfo]:
    """Every queue: those of the session's job kinds, those holding jobs, and the paused ones."""
    now = utcnow()
    counts: dict[str, dict[str, int]] = {name: {} for name in registry.of(session).queues()}
    oldest: dict[str, dt.datetime] = {}
    query = select(_jobs.c.queue, _jobs.c.status, func.count(), func.min(_jobs.c.enqueued_at).label("oldest")).group_by(
        _jobs.c.queue, _jobs.c.status
    )
    for row in session.execute(query):
        counts.setdefault(row.queue, {})[row.status] = row[2]
        if row.status == JobStatus.QUEUED and row.oldest is not None:
            oldest[row.queue] = row.oldest
    pauses = {pause.queue: pause for pause in session.scalars(select(models.QueuePause))}
    for name in pauses:
        counts.setdefault(name, {})
    return [
        QueueInfo(
            name=name,
            counts=counts[name],
            oldest_queued_seconds=(now - oldest[name]).total_seconds() if name in oldest else None,
            paused=name in pauses,
            paused_at=pauses[name].paused_at if name in pauses else None,
            pause_reason=pauses[name].reason if name in pauses else None,
        )
        for name in sorted(counts)
    ]


def _require_queue(session: Session, name: str) -> None:
    if name in registry.of(session).queues():
        return
    if session.scalar(select(_jobs.c.id).where(_jobs.c.queue == name).limit(1)) is not None:
        return
    if session.get(models.QueuePause, name) is not None:
        return
    raise errors.QueueNotFound(f"no queue {name!r}: no job kind uses it and no job is in it")


def pause_queue(session: Session, name: str, *, reason: str | None = None) -> bool:
    """Pause queue ``name``: from the commit on, no job of it starts (running ones finish). Returns
    False if it was paused already (then nothing changes).

    Raises:
        QueueNotFound: no job kind uses it, no job is in it, and it is not paused.
    """
    _require_queue(session, name)
    dialect = session.get_bind().dialect.name
    pause = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_pauses)
    row = session.execute(
        pause.values(queue=name, paused_at=utcnow(), reason=reason)
        .on_conflict_do_nothing(index_elements=["queue"])
        .returning(_pauses.c.queue)
    ).first()
    return row is not None


def resume_queue(session: Session, name: str) -> int | None:
    """Resume queue ``name`` and send its waiting jobs again (after commit: the claim skipped their
    messages while it was paused). Returns how many were sent; None if it was not paused.

    Raises:
        QueueNotFound: as :func:`pause_queue`.
    """
    _require_queue(session, name)
    if session.execute(delete(_pauses).where(_pauses.c.queue == name).returning(_pauses.c.queue)).first() is None:
        return None
    return _resend(session, select(_jobs.c.id, _jobs.c.queue, _jobs.c.next_retry_at).where(_jobs.c.queue == name))


def _resend(session: Session, query: Select[Any], limit: int | None = None) -> int:
    """Send the claimable jobs ``query`` selects (oldest first) after commit, a retrying one
    delayed to its ``next_retry_at``."""
    now = utcnow()
    rows = session.execute(
        query.where(_jobs.c.status.in_([s.value for s in models.CLAIMABLE])).order_by(_jobs.c.enqueued_at).limit(limit)
    ).all()
    messages = []
    for row in rows:
        delay_ms = 0
        if row.next_retry_at is not None and row.next_retry_at > now:
            delay_ms = int((row.next_retry_at - now).total_seconds() * 1000)
        messages.append(sending.JobMessage(row.id, row.queue, delay_ms=delay_ms or None))
    send_again(session, messages)
    return len(rows)


def wake_waiting_jobs(session: Session, kind: str, *, max_running: int) -> int:
    """Send again (after commit) the ``max_running`` oldest waiting jobs of ``kind``, whose messages
    the claim refused while the kind was at its limit: a job of it just ended, so a slot is free.
    Duplicates are harmless (the claim takes each job once)."""
    query = select(_jobs.c.id, _jobs.c.queue, _jobs.c.next_retry_at).where(_jobs.c.kind == kind)
    return _resend(session, query, limit=max_running)


_COUNT_RUNNING = select(func.count()).where(
    _jobs.c.kind == bindparam("b_kind"), _jobs.c.status == JobStatus.RUNNING.value
)
_KIND_OF = select(_jobs.c.kind).where(_jobs.c.id == bindparam("b_job_id"))


def kind_of(conn: Connection, job_id: uuid.UUID) -> str | None:
    """The kind of job ``job_id`` (None: no such job)."""
    return conn.execute(_KIND_OF, {"b_job_id": job_id}).scalar_one_or_none()


def lock_kind(conn: Connection, kind: str) -> None:
    """Serialise the claims of ``kind`` until the transaction ends: PostgreSQL's
    ``pg_advisory_xact_lock``; on SQLite, nothing (the claim's ``BEGIN IMMEDIATE`` does it)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(KIND_LOCK_NAMESPACE, func.hashtext(kind))))


def count_running(conn: Connection, kind: str) -> int:
    """How many jobs of ``kind`` are ``running``."""
    return int(conn.execute(_COUNT_RUNNING, {"b_kind": kind}).scalar_one())


def select_pause_of(conn: Connection, queue: str) -> bool:
    """Whether ``queue`` is paused."""
    return conn.execute(select(_pauses.c.queue).where(_pauses.c.queue == queue)).first() is not None
