"""Replaying failed jobs (one or many)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session

from jobs import errors, models, sending
from jobs.models import AttemptOutcome, JobStatus
from jobs.store.base import INSERT_ATTEMPT, attempt_row, send_again
from jobs.store.clock import database_time
from jobs.store.reading import get_job

_jobs = models.Job.__table__
_attempts = models.JobAttempt.__table__


def replay_jobs(session: Session, job_ids: Sequence[uuid.UUID], *, reason: str | None = None) -> list[uuid.UUID]:
    """Put the ``failed`` jobs among ``job_ids`` back to ``queued`` for a new run; skip the others.

    One conditional UPDATE: of two replays racing, each job goes to exactly one. The run's history
    stays; a ``replayed`` row records when and why. IDs are sent after commit. Returns those replayed.
    """
    if not job_ids:
        return []
    conn = session.connection()
    now = database_time(conn)
    rows = conn.execute(
        update(_jobs)
        .where(_jobs.c.id.in_(job_ids), _jobs.c.status == JobStatus.FAILED.value)
        .values(
            status=JobStatus.QUEUED.value,
            attempts=0,
            replay_count=_jobs.c.replay_count + 1,
            enqueued_at=now,
            finished_at=None,
            next_retry_at=None,
            claim_token=None,
            lease_expires_at=None,
            error_type=None,
            error_message=None,
            error_traceback=None,
            cancel_requested_at=None,
            cancel_reason=None,
        )
        .returning(_jobs.c.id, _jobs.c.queue, _jobs.c.replay_count)
    ).all()
    if rows:
        conn.execute(
            INSERT_ATTEMPT,
            [
                attempt_row(
                    row,
                    outcome=AttemptOutcome.REPLAYED,
                    finished_at=now,
                    number=0,
                    worker_id=None,
                    started_at=None,
                    error_message=reason,
                )
                for row in rows
            ],
        )
    send_again(session, [sending.JobMessage(row.id, row.queue) for row in rows])
    return [row.id for row in rows]


def replay_job(session: Session, job_id: uuid.UUID, *, reason: str | None = None) -> models.Job:
    """Replay one failed job.

    Raises:
        JobNotFound: no such job.
        JobNotReplayable: the job is not ``failed``.
    """
    job = get_job(session, job_id)
    if not replay_jobs(session, [job_id], reason=reason):
        raise errors.JobNotReplayable(f"job {job_id} is {job.status}; only a failed job can be replayed")
    session.refresh(job)
    return job
