"""Jobs whose worker died, jobs whose message seems lost, old jobs: the sweeper's and prune's work."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, exists, func, select, update
from sqlalchemy.orm import Session

from jobs import errors, models, registry, sending
from jobs.models import AttemptOutcome, JobStatus
from jobs.observe import counting
from jobs.store import cancelling
from jobs.store.base import INSERT_ATTEMPT, attempt_row, fresh_message
from jobs.store.clock import database_time, db_now
from jobs.store.running import run_failure_hook

_jobs = models.Job.__table__
_attempts = models.JobAttempt.__table__
_pauses = models.QueuePause.__table__

#: The attempt's message when its worker stopped renewing the lease.
LOST_MESSAGE = "the worker stopped renewing its lease (it died or stalled)"
#: The error type of a job failed because its worker died (see :func:`_take_back`).
WORKER_LOST_TYPE = "jobs.errors.WorkerLost"


def recover_lost_jobs(
    session: Session,
    *,
    quarantine_after_lost: int,
    job_ids: Sequence[uuid.UUID] | None = None,
    limit: int = 500,
) -> list[tuple[uuid.UUID, JobStatus]]:
    """Take back ``running`` jobs whose lease expired (their worker died): attempt ``lost``, then
    ``queued``, or ``failed`` once attempts are spent or the worker died ``quarantine_after_lost``
    times on the job. Returns each job taken back with its new status.
    """
    now = database_time(session.connection())
    query = (
        select(models.Job)
        .where(models.Job.status == JobStatus.RUNNING, models.Job.lease_expires_at < db_now())
        .order_by(models.Job.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if job_ids is not None:
        query = query.where(models.Job.id.in_(job_ids))
    recovered = []
    for job in session.scalars(query):
        recovered.append((job.id, _take_back(session, job, now=now, quarantine_after_lost=quarantine_after_lost)))
    session.flush()
    return recovered


def _as_running(session: Session, job: models.Job) -> registry.RunningJob:
    """The job as its handler and hooks see it (for a hook run outside the worker)."""
    kind = registry.of(session).find(job.kind)
    try:
        args = job.args if kind is None else kind.parse_args(job.args)
    except errors.PermanentError:
        args = job.args
    return registry.RunningJob(
        id=job.id,
        kind=job.kind,
        args=args,
        attempt=job.attempts,
        max_attempts=job.max_attempts,
        run=job.replay_count,
        claim_token=job.claim_token or uuid.uuid4(),
        queue=job.queue,
    )


def _take_back(session: Session, job: models.Job, *, now: dt.datetime, quarantine_after_lost: int) -> JobStatus:
    """Close the job's attempt as its worker's death and queue the job again, or fail it.

    The attempt is ``lost`` when the job goes back to ``queued``. When the job fails (this death is
    the ``quarantine_after_lost``-th of the run, or its last attempt), the attempt is the run's final
    one: ``failed``, with error type ``jobs.errors.WorkerLost``, as :func:`record_failure` writes
    ``failed`` rather than ``error`` for a last attempt. So every ``failed`` job has exactly one
    ``failed`` attempt in its current run, whichever path failed it. A job that was asked to stop
    (a cancel) ends ``cancelled`` instead, attempt ``cancelled``.
    """
    if job.cancel_requested_at is not None:
        return _cancel_taken_back(session, job, now=now)
    earlier_deaths = session.execute(
        select(func.count())
        .select_from(models.JobAttempt)
        .where(
            models.JobAttempt.job_id == job.id,
            models.JobAttempt.run == job.replay_count,
            models.JobAttempt.outcome == AttemptOutcome.LOST,
        )
    ).scalar_one()
    deaths = earlier_deaths + 1
    final = deaths >= quarantine_after_lost or job.attempts >= job.max_attempts
    if not final:
        session.execute(
            INSERT_ATTEMPT,
            attempt_row(job, outcome=AttemptOutcome.LOST, finished_at=now, error_message=LOST_MESSAGE),
        )
        job.claim_token = None
        job.lease_expires_at = None
        job.status = JobStatus.QUEUED
        job.enqueued_at = now
        message = fresh_message(job.id, job.queue)
        job.message_id = message.message_id  # flushed with the rest of the row (see fresh_message)
        sending.send_after_commit(session, message)
        return JobStatus.QUEUED
    error = errors.WorkerLost(
        f"worker died {deaths} times while running this job"
        if deaths >= quarantine_after_lost
        else f"worker died while running this job and its {job.max_attempts} attempts are spent"
    )
    session.execute(
        INSERT_ATTEMPT,
        attempt_row(
            job,
            outcome=AttemptOutcome.FAILED,
            finished_at=now,
            error_type=WORKER_LOST_TYPE,
            error_message=str(error),
        ),
    )
    job.claim_token = None
    job.lease_expires_at = None
    job.status = JobStatus.FAILED
    job.finished_at = now
    job.error_type = WORKER_LOST_TYPE
    job.error_message = str(error)
    job.error_traceback = None  # an earlier attempt's, if any: not this failure's
    run_failure_hook(session, _as_running(session, job), error)
    return JobStatus.FAILED


def _cancel_taken_back(session: Session, job: models.Job, *, now: dt.datetime) -> JobStatus:
    """A job asked to stop whose worker died before it recorded the cancel: end it ``cancelled``."""
    reason = job.cancel_reason or "cancelled while running"
    session.execute(
        INSERT_ATTEMPT,
        attempt_row(
            job,
            outcome=AttemptOutcome.CANCELLED,
            finished_at=now,
            error_type=cancelling.CANCELLED_TYPE,
            error_message=f"{reason} ({LOST_MESSAGE})",
        ),
    )
    job.claim_token = None
    job.lease_expires_at = None
    job.status = JobStatus.CANCELLED
    job.finished_at = now
    cancelling.run_cancel_hook(session, _as_running(session, job))
    return JobStatus.CANCELLED


#: The attempt's message when its worker came back after the job was taken back (see :func:`record_worker_alive`).
ALIVE_MESSAGE = "the worker was alive but could not renew its lease in time (database out of reach); taken back"
#: The error type of such an attempt.
CLAIM_LOST_TYPE = "jobs.errors.ClaimLost"


def extend_expired_leases(session: Session, *, lease_seconds: float) -> list[uuid.UUID]:
    """Give every ``running`` job whose lease expired one more lease from the database's now,
    taking nothing back: a sweeper's *grace pass* after it could not reach the database itself for
    longer than a lease (it cannot tell a dead worker from one cut off as it was). A live worker
    renews within that lease; a dead one's job is taken back by a later pass. Returns those extended.
    """
    rows = session.execute(
        update(_jobs)
        .where(_jobs.c.status == JobStatus.RUNNING.value, _jobs.c.lease_expires_at < db_now())
        .values(lease_expires_at=db_now(lease_seconds))
        .returning(_jobs.c.id)
    ).all()
    return [row.id for row in rows]


def record_worker_alive(session: Session, job: registry.RunningJob, *, worker_id: str) -> bool:
    """The worker that held ``job`` is alive and found its claim gone (it could not renew the lease
    in time): the ``lost`` attempt the sweeper recorded for it becomes an ``error`` (error type
    :data:`CLAIM_LOST_TYPE`), which counts against ``max_attempts`` as any failed attempt does but
    not towards quarantine, which counts worker deaths. Its work was discarded by the fence; nothing
    else is recorded. Returns whether there was such a row (there is none when the take-back ended
    the run: that stays as it is).
    """
    attempts = models.JobAttempt.__table__
    result = session.connection().execute(
        update(attempts)
        .where(
            attempts.c.job_id == job.id,
            attempts.c.run == job.run,
            attempts.c.number == job.attempt,
            attempts.c.worker_id == worker_id,
            attempts.c.outcome == AttemptOutcome.LOST.value,
        )
        .values(outcome=AttemptOutcome.ERROR.value, error_type=CLAIM_LOST_TYPE, error_message=ALIVE_MESSAGE)
    )
    return bool(result.rowcount)


# --- the sweeper --------------------------------------------------------------------------------

#: Key of the PostgreSQL advisory lock that lets one sweeper pass run at a time across workers.
SWEEP_LOCK_KEY = 0x6A6F6272  # "jobr"


def try_sweep_lock(session: Session) -> bool:
    """Take the sweeper's lock for this transaction, if no other pass holds it.

    PostgreSQL: ``pg_try_advisory_xact_lock``, released at commit. SQLite: every write transaction
    begins with ``BEGIN IMMEDIATE`` and so already excludes every other writer.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(select(func.pg_try_advisory_xact_lock(SWEEP_LOCK_KEY))).scalar_one())


def resend_overdue_jobs(
    session: Session,
    *,
    older_than_seconds: float,
    held: sending.HeldProbe | None = None,
    trust_held_for_seconds: float = 0.0,
    limit: int = 1000,
) -> list[uuid.UUID]:
    """Send again the jobs whose message seems lost: ``queued`` and last sent before the cutoff, or
    ``retrying`` with ``next_retry_at`` before it. A duplicate message is harmless (the claim skips it)
    but costs a delivery, so a long backlog must not be re-sent on every pass:

    - ``held``: asks the broker which of the overdue jobs' last messages it still holds (waiting in
      a long backlog, delayed, or delivered and not yet acknowledged), by the key the row records
      (every send of a job records its key: :func:`jobs.store.base.fresh_message`). Those are not
      sent again, only marked checked (``resend_checked_at``), unless they were deliverable for more
      than ``trust_held_for_seconds`` (since they were sent or, for a retry's delayed message, since
      its ``next_retry_at``): a message the broker holds but never delivers (stranded with a dead
      consumer) is sent again then. Without a probe every overdue job is sent again, as the broker
      cannot tell.
    - A job sent again gets a new message key (``message_id``) and ``enqueued_at`` now; a job checked
      is not looked at again before the cutoff passes once more.

    Returns the IDs sent again.
    """
    now = database_time(session.connection())  # enqueued_at is written by every host: one clock
    cutoff = now - dt.timedelta(seconds=older_than_seconds)
    overdue = (
        select(_jobs.c.id, _jobs.c.queue, _jobs.c.message_id, _jobs.c.enqueued_at, _jobs.c.next_retry_at)
        .where(
            _jobs.c.enqueued_at < cutoff,
            ~exists().where(_pauses.c.queue == _jobs.c.queue),  # resumed, they are sent at once
            (_jobs.c.status == JobStatus.QUEUED.value)
            | ((_jobs.c.status == JobStatus.RETRYING.value) & (_jobs.c.next_retry_at < cutoff)),
            (_jobs.c.resend_checked_at.is_(None)) | (_jobs.c.resend_checked_at < cutoff),
        )
        .order_by(_jobs.c.enqueued_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        overdue = overdue.with_for_update(skip_locked=True)
    rows = session.execute(overdue).all()
    if not rows:
        return []
    still_held: set[uuid.UUID] = set()
    if held is not None:
        trusted_since = now - dt.timedelta(seconds=trust_held_for_seconds)
        still_held = held(
            [
                sending.JobMessage(row.id, row.queue, message_id=row.message_id or row.id)
                for row in rows
                if _deliverable_since(row) >= trusted_since
            ]
        )
    if still_held:
        session.execute(update(_jobs).where(_jobs.c.id.in_(still_held)).values(resend_checked_at=now))
    messages = [fresh_message(row.id, row.queue) for row in rows if row.id not in still_held]
    if messages:
        session.execute(
            update(_jobs)
            .where(_jobs.c.id == bindparam("b_id"))
            .values(enqueued_at=now, message_id=bindparam("b_message_id"), resend_checked_at=None),
            [{"b_id": message.job_id, "b_message_id": message.message_id} for message in messages],
        )
    for message in messages:
        sending.send_after_commit(session, message)
    counting.add_to_counter(session.connection(), counting.SWEEPER_RESENDS, len(messages))
    return [message.job_id for message in messages]


def _deliverable_since(row: Any) -> dt.datetime:
    """Since when the job's last message could have been delivered: when it was sent, or, for a
    retry's delayed message, not before the retry was due."""
    if row.next_retry_at is None:
        return row.enqueued_at  # type: ignore[no-any-return]
    return max(row.enqueued_at, row.next_retry_at)  # type: ignore[no-any-return]


def prune_jobs(
    session: Session, *, statuses: Sequence[JobStatus], older_than: dt.datetime, batch_size: int = 1000
) -> int:
    """Delete one batch of jobs in ``statuses`` finished before ``older_than``, the oldest first
    (and, by cascade, their history). Returns how many; call again until it returns 0.

    The order makes the batch a walk of ``ix_jobs_finished_at_status`` from its oldest end, however
    many rows the table holds; without it, PostgreSQL picks a sequential scan with a limit when most
    jobs are old enough, which reads every page the earlier batches emptied before it finds a row."""
    doomed = (
        select(_jobs.c.id)
        .where(_jobs.c.status.in_([s.value for s in statuses]), _jobs.c.finished_at < older_than)
        .order_by(_jobs.c.finished_at)
        .limit(batch_size)
    )
    ids = list(session.scalars(doomed))
    if ids:
        session.execute(_attempts.delete().where(_attempts.c.job_id.in_(ids)))
        session.execute(_jobs.delete().where(_jobs.c.id.in_(ids)))
    return len(ids)
