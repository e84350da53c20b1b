"""``/schedules``: list, add, pause, resume, run now and delete cron schedules."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api import schemas
from api.deps import ReadSessionDep, SessionDep
from api.responses import errors
from jobs.models import JobStatus
from jobs.scheduling import service, timing
from jobs.scheduling.views import ScheduleOut

router = APIRouter(prefix="/schedules", tags=["schedules"])

NamePath = Annotated[str, Path(min_length=1, max_length=200)]


class ScheduleIn(BaseModel):
    """``POST /schedules``: a job of ``kind`` with ``args`` at each time of ``cron`` (read in
    ``timezone``) or every ``every_seconds``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[!-~]+$")
    kind: str = Field(min_length=1, max_length=100)
    cron: str | None = Field(default=None, min_length=1, max_length=200, examples=["0 3 * * *"])
    every_seconds: float | None = Field(
        default=None, ge=timing.MIN_EVERY_SECONDS, le=timing.MAX_EVERY_SECONDS, examples=[60]
    )
    args: dict[str, Any] = Field(default_factory=dict)
    timezone: str = Field(default="UTC", min_length=1, max_length=64, examples=["Europe/Paris"])

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleIn:
        if (self.cron is None) == (self.every_seconds is None):
            raise ValueError("give exactly one of cron and every_seconds")
        return self


@router.get("", response_model=list[ScheduleOut], responses=errors(401))
def list_schedules(session: ReadSessionDep) -> list[ScheduleOut]:
    """Every schedule, by name, with its next fire time."""
    return [ScheduleOut.model_validate(schedule) for schedule in service.list_schedules(session)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ScheduleOut, responses=errors(401, 409, 422))
def create_schedule(request: ScheduleIn, session: SessionDep) -> ScheduleOut:
    """Add a schedule of a public kind; it first fires at its first time after now."""
    when = timing.Timing(cron=request.cron, every_seconds=request.every_seconds, timezone=request.timezone)
    schedule = service.create_schedule(session, request.name, request.kind, when, request.args, public_only=True)
    session.commit()
    return ScheduleOut.model_validate(schedule)


@router.post("/{name}/pause", response_model=ScheduleOut, responses=errors(401, 404, 422))
def pause_schedule(name: NamePath, session: SessionDep) -> ScheduleOut:
    """Stop the schedule firing until resumed."""
    schedule = service.pause_schedule(session, name)
    session.commit()
    return ScheduleOut.model_validate(schedule)


@router.post("/{name}/resume", response_model=ScheduleOut, responses=errors(401, 404, 422))
def resume_schedule(name: NamePath, session: SessionDep) -> ScheduleOut:
    """Let the schedule fire again, from its next time after now (paused times are not caught up)."""
    schedule = service.resume_schedule(session, name)
    session.commit()
    return ScheduleOut.model_validate(schedule)


@router.post(
    "/{name}/run",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.JobAccepted,
    responses=errors(401, 404, 422),
)
def run_schedule(name: NamePath, session: SessionDep) -> schemas.JobAccepted:
    """Create the schedule's job now, out of its timing (its timed fires go on)."""
    job = service.run_schedule(session, name)
    session.commit()
    return schemas.JobAccepted(job_id=job.id, status=JobStatus(job.status))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(401, 404, 422))
def delete_schedule(name: NamePath, session: SessionDep) -> None:
    """Delete the schedule (its jobs stay). One declared in code comes back at the next worker boot."""
    service.delete_schedule(session, name)
    session.commit()
