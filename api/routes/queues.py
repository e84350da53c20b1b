"""``/queues``: what waits and runs in each queue; pause and resume one."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Body, Path
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ReadSessionDep, SessionDep
from api.responses import errors
from jobs import store

router = APIRouter(prefix="/queues", tags=["queues"])

QueueName = Annotated[str, Path(min_length=1, max_length=100)]


class QueueOut(BaseModel):
    """One queue: its jobs by state, how long the oldest queued one has waited, and its pause."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    counts: dict[str, int]
    oldest_queued_seconds: float | None
    paused: bool
    paused_at: dt.datetime | None
    pause_reason: str | None


class PauseRequest(BaseModel):
    """``POST /queues/{name}/pause``: why, shown by ``GET /queues``."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)


class QueueChanged(BaseModel):
    """What a pause or resume did."""

    name: str
    paused: bool
    #: False when the queue already was as asked (the request changed nothing).
    changed: bool
    #: Resume: how many waiting jobs were sent to the workers again.
    resent: int = 0


@router.get("", response_model=list[QueueOut], responses=errors(401))
def list_queues(session: ReadSessionDep) -> list[QueueOut]:
    """Every queue (those of the job kinds, those holding jobs, the paused ones)."""
    return [QueueOut.model_validate(queue) for queue in store.list_queues(session)]


@router.post("/{name}/pause", response_model=QueueChanged, responses=errors(401, 404, 422))
def pause_queue(
    name: QueueName, session: SessionDep, request: Annotated[PauseRequest | None, Body()] = None
) -> QueueChanged:
    """Start no new job of the queue until it is resumed; running jobs finish. Its jobs stay queued."""
    changed = store.pause_queue(session, name, reason=request.reason if request else None)
    session.commit()
    return QueueChanged(name=name, paused=True, changed=changed)


@router.post("/{name}/resume", response_model=QueueChanged, responses=errors(401, 404, 422))
def resume_queue(name: QueueName, session: SessionDep) -> QueueChanged:
    """Start the queue's jobs again: its waiting jobs are sent to the workers at once."""
    resent = store.resume_queue(session, name)
    session.commit()
    return QueueChanged(name=name, paused=False, changed=resent is not None, resent=resent or 0)
