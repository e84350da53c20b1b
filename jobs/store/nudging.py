"""Retrying jobs now instead of at their ``next_retry_at`` (an operator's "retry now")."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session

from jobs import models, sending
from jobs.models import JobStatus
from jobs.store.base import send_again, utcnow

_jobs = models.Job.__table__


def retry_jobs_now(session: Session, job_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Send the ``retrying`` jobs among ``job_ids`` to the workers now, without waiting for their
    backoff; skip the others. Returns those sent.

    One conditional UPDATE (``next_retry_at`` and ``enqueued_at`` become now); the IDs go to the
    broker after commit. The delayed message of the retry is still in the broker: when it comes, the
    claim skips it if the job has finished or is running (as for any duplicate message).
    """
    if not job_ids:
        return []
    now = utcnow()
    rows = session.execute(
        update(_jobs)
        .where(_jobs.c.id.in_(job_ids), _jobs.c.status == JobStatus.RETRYING.value)
        .values(next_retry_at=now, enqueued_at=now)
        .returning(_jobs.c.id, _jobs.c.queue)
    ).all()
    send_again(session, [sending.JobMessage(row.id, row.queue) for row in rows])
    return [row.id for row in rows]
