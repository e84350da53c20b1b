"""Delayed jobs the broker did not deliver: the sweeper's safety net under the broker's delay."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobs import models, sending
from jobs.models import JobStatus
from jobs.store.base import send_again
from jobs.store.clock import database_time

_jobs = models.Job.__table__


def release_overdue_scheduled(session: Session, *, older_than_seconds: float, limit: int = 1000) -> list[uuid.UUID]:
    """Make ``queued``, and send again, the ``scheduled`` jobs due for longer than ``older_than_seconds``:
    their delayed message was lost (a flushed or failed-over Redis) or is stuck behind a backlog. A
    duplicate message is harmless: the claim takes the job once."""
    now = database_time(session.connection())  # run_at is the database's time too
    overdue = (
        select(_jobs.c.id)
        .where(
            _jobs.c.status == JobStatus.SCHEDULED.value, _jobs.c.run_at < now - dt.timedelta(seconds=older_than_seconds)
        )
        .order_by(_jobs.c.run_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        overdue = overdue.with_for_update(skip_locked=True)
    rows = session.execute(
        update(_jobs)
        .where(_jobs.c.id.in_(overdue.scalar_subquery()), _jobs.c.status == JobStatus.SCHEDULED.value)
        .values(status=JobStatus.QUEUED.value, enqueued_at=now)
        .returning(_jobs.c.id, _jobs.c.queue)
    ).all()
    send_again(session, [sending.JobMessage(row.id, row.queue) for row in rows])
    return [row.id for row in rows]
