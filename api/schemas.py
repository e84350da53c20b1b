"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from jobs.models import AttemptOutcome, JobStatus
from jobs.registry import JobKind


class ErrorBody(BaseModel):
    """Every 4xx answer: a message, or FastAPI's list of validation errors."""

    detail: str | list[dict[str, Any]]


def job_request_model(kinds: list[JobKind]) -> Any:
    """``POST /jobs``'s body: one variant per public kind, ``kind`` naming it and ``args`` its model,
    so the OpenAPI document tells clients exactly what each kind takes (and FastAPI checks it)."""
    variants = []
    for kind in kinds:
        name = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", kind.name)) + "JobRequest"
        args_type: Any = kind.args_model or dict[str, Any]
        variants.append(
            create_model(
                name,
                __config__=ConfigDict(extra="forbid"),
                __doc__=f"A ``{kind.name}`` job.",
                kind=(Literal[kind.name], ...),  # type: ignore[valid-type]
                args=(args_type, Field(default_factory=args_type)),
            )
        )
    if not variants:
        raise RuntimeError("no public job kind is registered")
    return Annotated[Union[tuple(variants)], Field(discriminator="kind")]  # noqa: UP007


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
