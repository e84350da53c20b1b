"""How a job reads from outside: the pydantic models the API answers with and ``jobctl --json``
prints, so both show a job the same way."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from jobs import store
from jobs.models import AttemptOutcome, JobStatus


class AttemptOut(BaseModel):
    """One entry of a job's history."""

    model_config = ConfigDict(from_attributes=True)

    run: int
    number: int
    outcome: AttemptOutcome
    worker_id: str | None
    started_at: dt.datetime | None
    finished_at: dt.datetime
    error_type: str | None
    error_message: str | None
    error_traceback: str | None


class JobSummary(BaseModel):
    """A job in a listing."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    queue: str
    status: JobStatus
    attempts: int
    max_attempts: int
    replay_count: int
    error_type: str | None
    error_message: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    next_retry_at: dt.datetime | None
    #: When a delayed job is due (None: it ran, or runs, at once).
    run_at: dt.datetime | None = None
    unique_key: str | None = None


class JobOut(JobSummary):
    """A job with its arguments, last traceback and attempt history."""

    args: dict[str, Any]
    error_traceback: str | None
    enqueued_at: dt.datetime | None
    lease_expires_at: dt.datetime | None
    worker_id: str | None
    cancel_requested_at: dt.datetime | None
    cancel_reason: str | None
    history: list[AttemptOut]


def job_out(session: Session, job_id: uuid.UUID) -> JobOut:
    """A job with its attempt history.

    Raises:
        JobNotFound: there is no such job.
    """
    job = store.get_job(session, job_id)
    history = [AttemptOut.model_validate(a) for a in store.list_attempts(session, job_id)]
    return JobOut.model_validate(
        {
            **JobSummary.model_validate(job).model_dump(),
            "args": job.args,
            "error_traceback": job.error_traceback,
            "enqueued_at": job.enqueued_at,
            "lease_expires_at": job.lease_expires_at,
            "worker_id": job.worker_id,
            "cancel_requested_at": job.cancel_requested_at,
            "cancel_reason": job.cancel_reason,
            "history": history,
        }
    )
