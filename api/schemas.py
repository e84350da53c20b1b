"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobs.models import AttemptOutcome, JobStatus


class ErrorBody(BaseModel):
    """Every 4xx answer: a message, or FastAPI's list of validation errors."""

    detail: str | list[dict[str, Any]]


class JobRequest(BaseModel):
    """``POST /jobs``: a public job kind and its arguments."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=100)
    args: dict[str, Any] = Field(default_factory=dict)


class ReplayRequest(BaseModel):
    """``POST /jobs/{id}/replay``: why, for the job's history."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)


class JobAccepted(BaseModel):
    """A job was stored and its ID sent (or left for the sweeper)."""

    job_id: uuid.UUID
    status: JobStatus


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


class JobOut(JobSummary):
    """A job with its arguments, last traceback and attempt history."""

    args: dict[str, Any]
    error_traceback: str | None
    enqueued_at: dt.datetime | None
    lease_expires_at: dt.datetime | None
    worker_id: str | None
    history: list[AttemptOut]


class JobPage(BaseModel):
    """A page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[JobSummary]
    next_cursor: str | None


class Health(BaseModel):
    """What ``/healthz`` found."""

    database: str
    broker: str
