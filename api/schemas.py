"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model, model_validator

from api.validation import safe_text
from jobs.models import JobStatus
from jobs.registry import JobKind, Registry
from jobs.views import AttemptOut, JobOut, JobSummary

__all__ = ["AttemptOut", "JobOut", "JobSummary"]  # the API's bodies of a job are jobs.views'

#: The longest ``delay_seconds`` of ``POST /jobs`` (a year).
MAX_DELAY_SECONDS = 366 * 86_400.0


class ErrorBody(BaseModel):
    """Every 4xx answer: a message, or FastAPI's list of validation errors."""

    detail: str | list[dict[str, Any]]


class JobOptions(BaseModel):
    """What ``POST /jobs`` takes besides the kind and its args: when to run, and a unique key."""

    model_config = ConfigDict(extra="forbid")

    run_at: AwareDatetime | None = Field(
        default=None, description="Run at this time (ISO 8601 with a timezone); until then the job is scheduled."
    )
    delay_seconds: float | None = Field(
        default=None, ge=0, le=MAX_DELAY_SECONDS, description="Run this many seconds from now (not with run_at)."
    )
    unique_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="While a job of this kind with this key is unfinished, answer that job (200, duplicate) "
        "instead of creating another.",
    )

    @model_validator(mode="after")
    def _one_time(self) -> JobOptions:
        if self.run_at is not None and self.delay_seconds is not None:
            raise ValueError("give run_at or delay_seconds, not both")
        if self.run_at is not None:
            try:  # stored in UTC: 0001-01-01T00:00+05:00 has no UTC time
                self.run_at = self.run_at.astimezone(dt.UTC)
            except OverflowError:
                raise ValueError("run_at is out of range") from None
        return self


class JobRequestBody(Protocol):
    """What every variant of :func:`job_request_model` holds, as the route reads it."""

    @property
    def kind(self) -> str: ...

    @property
    def args(self) -> BaseModel | dict[str, Any]: ...

    @property
    def run_at(self) -> dt.datetime | None: ...

    @property
    def delay_seconds(self) -> float | None: ...

    @property
    def unique_key(self) -> str | None: ...


def job_request_model(kinds: list[JobKind]) -> Any:
    """``POST /jobs``'s body: one variant per public kind, ``kind`` naming it and ``args`` its model,
    so the OpenAPI document tells clients exactly what each kind takes (and FastAPI checks it)."""
    variants = []
    for kind in kinds:
        name = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", kind.name)) + "JobRequest"
        args_type: Any = kind.args_model or dict[str, Any]
        kind_type: Any = Literal[kind.name]
        variants.append(
            create_model(
                name,
                __base__=JobOptions,
                __doc__=f"A ``{kind.name}`` job.",
                kind=(kind_type, ...),
                args=(args_type, Field(default_factory=args_type)),
            )
        )
    if not variants:
        raise RuntimeError("no public job kind is registered")
    return Annotated[Union[tuple(variants)], Field(discriminator="kind")]  # noqa: UP007


def unknown_kind_message(errors: Sequence[Mapping[str, Any]], kind_registry: Registry) -> str | None:
    """One readable line for a ``POST /jobs`` body whose ``kind`` names no public kind (pydantic's
    ``union_tag_invalid`` on :func:`job_request_model`'s discriminator); None for other errors."""
    if len(errors) != 1:
        return None
    error = errors[0]
    ctx = error.get("ctx") or {}
    if error["type"] != "union_tag_invalid" or tuple(error["loc"]) != ("body",) or ctx.get("discriminator") != "'kind'":
        return None
    tag = str(ctx.get("tag", ""))
    public = ", ".join(sorted(kind.name for kind in kind_registry.all() if kind.public))
    known = kind_registry.find(tag)
    what = (
        f"job kind '{safe_text(tag, 100)}' is internal (not postable)"
        if known
        else f"unknown job kind '{safe_text(tag, 100)}'"
    )
    return f"{what}; public kinds: {public}"


class ReplayRequest(BaseModel):
    """``POST /jobs/{id}/replay``: why, for the job's history."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)


class CancelRequest(BaseModel):
    """``POST /jobs/{id}/cancel``: why, kept on the job (and its attempt, if it was running)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)


class JobCancelled(BaseModel):
    """What a cancel did: ``cancelled`` at once, or ``running`` and ``stopping``."""

    job_id: uuid.UUID
    status: JobStatus
    #: The job was running: it was asked to stop and ends ``cancelled`` within a few seconds.
    stopping: bool


class JobAccepted(BaseModel):
    """A job was stored and its ID sent (or left for the sweeper)."""

    job_id: uuid.UUID
    status: JobStatus


class JobCreated(JobAccepted):
    """``POST /jobs``'s answer: a new job (202), or, for a unique key an unfinished job holds, that
    job (200, ``duplicate``)."""

    duplicate: bool = False


class JobPage(BaseModel):
    """A page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[JobSummary]
    next_cursor: str | None


class Health(BaseModel):
    """What ``/healthz`` found."""

    database: str
    broker: str
