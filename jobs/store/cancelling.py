"""Cancelling jobs: a job not running ends ``cancelled`` at once; a running one is asked to stop,
and its worker ends it ``cancelled`` when it notices (at the handler's next ``checkpoint()``, or by
interrupting the handler's thread), rolling its work back.

A cancel request is the job's ``cancel_requested_at`` (and ``cancel_reason``): the row, not a
message, carries it, so every worker of every host sees it and it survives a worker's death.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.orm import Session

from jobs import errors, models, registry
from jobs.models import AttemptOutcome, JobStatus, UTCDateTime
from jobs.store.base import INSERT_ATTEMPT, attempt_row, utcnow
from jobs.store.reading import get_job
from jobs.store.running import FENCE

logger = logging.getLogger(__name__)

_jobs = models.Job.__table__

#: The error type on the attempt row of a job stopped while running.
CANCELLED_TYPE = "jobs.errors.JobCancelled"
#: States a cancel acts on: those ended at once, and running (asked to stop).
CANCELLABLE = (*models.CANCELLABLE_AT_ONCE, JobStatus.RUNNING)


@dataclasses.dataclass(frozen=True, slots=True)
class Cancellation:
    """What a cancel did."""

    #: Ended ``cancelled`` at once (they were not running).
    cancelled: list[uuid.UUID]
    #: Running: asked to stop; each ends ``cancelled`` within a few seconds, unless it finishes first.
    stopping: list[uuid.UUID]


def cancel_jobs(
    session: Session, job_ids: Sequence[uuid.UUID] | Select[Any], *, reason: str | None = None
) -> list[uuid.UUID]:
    """Cancel the jobs among ``job_ids`` (a list, or a SELECT of IDs) that are not running:
    ``queued|retrying -> cancelled`` (:data:`models.CANCELLABLE_AT_ONCE`), in one conditional UPDATE.
    A running job is left alone (see :func:`cancel`); a message still in the broker for a cancelled
    job is skipped by the claim. Returns those cancelled.
    """
    now = utcnow()
    rows = session.execute(
        update(_jobs)
        .where(_jobs.c.id.in_(job_ids), _jobs.c.status.in_([s.value for s in models.CANCELLABLE_AT_ONCE]))
        .values(
            status=JobStatus.CANCELLED.value,
            finished_at=now,
            next_retry_at=None,
            claim_token=None,
            lease_expires_at=None,
            cancel_requested_at=now,
            cancel_reason=reason,
        )
        .returning(_jobs.c.id)
    ).all()
    return [row.id for row in rows]


def request_stop(
    session: Session, job_ids: Sequence[uuid.UUID] | Select[Any], *, reason: str | None = None
) -> list[uuid.UUID]:
    """Ask the ``running`` jobs among ``job_ids`` to stop (those not asked already); returns them.
    Their workers see it within about a second (see :mod:`worker.stopping`)."""
    rows = session.execute(
        update(_jobs)
        .where(
            _jobs.c.id.in_(job_ids),
            _jobs.c.status == JobStatus.RUNNING.value,
            _jobs.c.cancel_requested_at.is_(None),
        )
        .values(cancel_requested_at=utcnow(), cancel_reason=reason)
        .returning(_jobs.c.id)
    ).all()
    return [row.id for row in rows]


def cancel(session: Session, job_ids: Sequence[uuid.UUID], *, reason: str | None = None) -> Cancellation:
    """Cancel ``job_ids``: those not running at once, running ones by a request to stop. A job
    claimed between the two statements is caught by the second (each reads the latest rows)."""
    cancelled = cancel_jobs(session, job_ids, reason=reason)
    done = set(cancelled)
    rest = [job_id for job_id in job_ids if job_id not in done]
    return Cancellation(cancelled=cancelled, stopping=request_stop(session, rest, reason=reason) if rest else [])


def cancel_job(session: Session, job_id: uuid.UUID, *, reason: str | None = None) -> models.Job:
    """Cancel one job (see :func:`cancel`); returns it, ``cancelled`` or still ``running``.

    Raises:
        JobNotFound: no such job.
        JobNotCancellable: it has finished.
    """
    job = get_job(session, job_id)
    done = cancel(session, [job_id], reason=reason)
    session.refresh(job)
    if not done.cancelled and not done.stopping and job.status != JobStatus.RUNNING:
        raise errors.JobNotCancellable(f"job {job_id} is {job.status}; only an unfinished job can be cancelled")
    return job


def select_cancellable_jobs(
    session: Session,
    *,
    job_ids: Sequence[uuid.UUID] = (),
    kind: str | None = None,
    queue: str | None = None,
    limit: int | None = None,
) -> list[models.Job]:
    """The jobs a cancel would act on (queued, retrying or running) matching every filter given,
    oldest first."""
    query = select(models.Job).where(models.Job.status.in_(CANCELLABLE))
    if job_ids:
        query = query.where(models.Job.id.in_(job_ids))
    if kind is not None:
        query = query.where(models.Job.kind == kind)
    if queue is not None:
        query = query.where(models.Job.queue == queue)
    return list(session.scalars(query.order_by(models.Job.created_at, models.Job.id).limit(limit)))


# --- the worker's side -----------------------------------------------------------------------------

_STOPPED = (
    update(_jobs)
    .where(*FENCE, _jobs.c.cancel_requested_at.is_not(None))
    .values(
        status=JobStatus.CANCELLED.value,
        finished_at=bindparam("b_now", type_=UTCDateTime()),
        lease_expires_at=None,
        next_retry_at=None,
    )
    .returning(
        _jobs.c.id,
        _jobs.c.replay_count,
        _jobs.c.attempts,
        _jobs.c.worker_id,
        _jobs.c.started_at,
        _jobs.c.cancel_reason,
    )
)


def record_cancellation(session: Session, job: registry.RunningJob) -> bool:
    """End ``job`` ``cancelled`` if it was asked to stop and this worker still holds its claim, in
    ``session`` (a fresh one: the handler's was rolled back): an attempt row ``cancelled``, then the
    kind's ``on_cancelled`` hook, in this same transaction. Returns False, changing nothing, when no
    cancel was asked for (or the claim is lost): the caller records the attempt's other outcome.
    """
    now = utcnow()
    row = session.connection().execute(_STOPPED, {"b_job_id": job.id, "b_token": job.claim_token, "b_now": now}).first()
    if row is None:
        return False
    message = row.cancel_reason or "cancelled while running"
    session.execute(
        INSERT_ATTEMPT,
        attempt_row(
            row, outcome=AttemptOutcome.CANCELLED, finished_at=now, error_type=CANCELLED_TYPE, error_message=message
        ),
    )
    run_cancel_hook(session, job)
    return True


def run_cancel_hook(session: Session, job: registry.RunningJob) -> None:
    """Run the kind's ``on_cancelled`` in a SAVEPOINT: a hook that raises is logged and undone, and
    the cancel is still recorded."""
    kind = registry.of(session).find(job.kind)
    hook = kind.on_cancelled if kind is not None else None
    if hook is None:
        return
    try:
        with session.begin_nested():
            hook(session, job)
    except Exception:
        logger.exception(
            "the on_cancelled hook of job %s (%s) raised; the cancel is recorded without it", job.id, job.kind
        )


_ASKED_TO_STOP = select(_jobs.c.id, _jobs.c.claim_token).where(
    _jobs.c.id.in_(bindparam("b_ids", expanding=True)),
    _jobs.c.status == JobStatus.RUNNING.value,
    _jobs.c.cancel_requested_at.is_not(None),
)


def asked_to_stop(session: Session, claims: Mapping[uuid.UUID, uuid.UUID]) -> set[uuid.UUID]:
    """Of the running jobs in ``claims`` (job ID: claim token), the claim tokens of those asked to
    stop (looked up by primary key)."""
    if not claims:
        return set()
    rows = session.execute(_ASKED_TO_STOP, {"b_ids": list(claims)})
    return {row.claim_token for row in rows if claims.get(row.id) == row.claim_token}
