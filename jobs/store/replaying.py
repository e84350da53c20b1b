"""Replaying failed jobs (one, many, a batch's) and cancelling jobs not yet started."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, case, insert, select, update
from sqlalchemy.orm import Session

from jobs import db, errors, models, sending
from jobs.models import AttemptOutcome, JobStatus
from jobs.store.base import utcnow
from jobs.store.reading import get_job

_jobs = models.Job.__table__
_attempts = models.JobAttempt.__table__

_INSERT_ATTEMPT = insert(_attempts)


def replay_jobs(session: Session, job_ids: Sequence[uuid.UUID], *, reason: str | None = None) -> list[uuid.UUID]:
    """Put the ``failed`` jobs among ``job_ids`` back to ``queued`` for a new run; skip the others.

    One conditional UPDATE: of two replays racing, each job goes to exactly one. The run's history
    stays; a ``replayed`` row records when and why. IDs are sent after commit. Returns those replayed.
    """
    if not job_ids:
        return []
    now = utcnow()
    conn = session.connection()
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
        )
        .returning(_jobs.c.id, _jobs.c.queue, _jobs.c.replay_count)
    ).all()
    if rows:
        conn.execute(
            _INSERT_ATTEMPT,
            [
                {
                    "job_id": row.id,
                    "run": row.replay_count,
                    "number": 0,
                    "worker_id": None,
                    "started_at": None,
                    "finished_at": now,
                    "outcome": AttemptOutcome.REPLAYED.value,
                    "error_message": reason,
                }
                for row in rows
            ],
        )
    for row in rows:
        sending.send_after_commit(session, sending.JobMessage(row.id, row.queue))
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


def cancel_jobs(session: Session, job_ids: Sequence[uuid.UUID] | Select[Any]) -> list[uuid.UUID]:
    """Cancel the jobs among ``job_ids`` (a list, or a SELECT of IDs) that have not started:
    ``queued|retrying -> cancelled``, in one conditional UPDATE. A running job is left to finish; a
    message still in the broker for a cancelled job is skipped by the claim. Returns those cancelled.
    """
    rows = session.execute(
        update(_jobs)
        .where(_jobs.c.id.in_(job_ids), _jobs.c.status.in_([s.value for s in models.CLAIMABLE]))
        .values(status=JobStatus.CANCELLED.value, finished_at=utcnow(), next_retry_at=None,
                claim_token=None, lease_expires_at=None)
        .returning(_jobs.c.id)
    ).all()
    return [row.id for row in rows]


def replay_batch(
    session: Session, batch_id: uuid.UUID, *, reason: str | None = None, job_ids: Sequence[uuid.UUID] | None = None
) -> list[uuid.UUID]:
    """Replay a batch's failed chunk jobs (only those among ``job_ids`` if given) and reopen the batch
    for a new run, in the caller's transaction; a failed ``batch.plan`` job is replayed too, and the
    batch goes back to planning. Returns the jobs replayed.

    Raises:
        BatchNotFound: there is no such batch.
    """
    batch = db.get_or_raise(
        session, models.Batch, batch_id, errors.BatchNotFound, what="batch", with_for_update=True, populate_existing=True
    )
    chunks = models.BatchChunk.__table__
    query = (
        select(chunks.c.job_id)
        .join(_jobs, _jobs.c.id == chunks.c.job_id)
        .where(chunks.c.batch_id == batch_id, _jobs.c.status == JobStatus.FAILED.value)
    )
    if job_ids is not None:
        query = query.where(chunks.c.job_id.in_(job_ids))
    replayed = replay_jobs(session, list(session.scalars(query)), reason=reason)
    reopen_batch_chunks(session, batch_id, replayed)
    wanted = job_ids is None or batch.job_id in job_ids
    if batch.status == models.BatchStatus.FAILED and batch.job_id is not None and wanted:
        if replay_jobs(session, [batch.job_id], reason=reason):
            replayed.append(batch.job_id)
            batch.status, batch.error_message, batch.finished_at = models.BatchStatus.PLANNING, None, None
    session.flush()
    return replayed


def reopen_batch_chunks(session: Session, batch_id: uuid.UUID, job_ids: Sequence[uuid.UUID]) -> int:
    """Put the failed chunks of these (replayed) chunk jobs back to pending and reopen their batch:
    ``running``, those chunks no longer done, and a new run if its completion had fired for this
    one. The chunks' earlier share of the counts stays until they finish again (and replace it).
    Returns how many chunks were reopened."""
    if not job_ids:
        return 0
    chunks, batches = models.BatchChunk.__table__, models.Batch.__table__
    reopened = session.execute(
        update(chunks)
        .where(chunks.c.batch_id == batch_id, chunks.c.job_id.in_(job_ids),
               chunks.c.status == models.ChunkStatus.FAILED.value)
        .values(status=models.ChunkStatus.PENDING.value)
    ).rowcount
    if reopened:
        finished = batches.c.status != models.BatchStatus.RUNNING.value
        session.execute(
            update(batches)
            .where(batches.c.id == batch_id)
            .values(status=models.BatchStatus.RUNNING.value, chunks_done=batches.c.chunks_done - reopened,
                    run=batches.c.run + case((finished, 1), else_=0), finished_at=None)
        )
    return reopened
