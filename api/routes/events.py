"""``/events``: ingest domain events (one or a list of up to 1,000) and read one back."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response, status
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from api.deps import SessionDep
from api.responses import errors
from jobs.kinds.events import outbox as events
from jobs.models import JobStatus

router = APIRouter(prefix="/events", tags=["events"])


def _list_public_types(schema: dict[str, JsonValue]) -> None:
    # Called when the OpenAPI document is built (every event type is registered by then).
    public: list[JsonValue] = list(events.public_types())
    schema["enum"] = public


class EventIn(BaseModel):
    """One event: its type (a public one), its payload, and an optional idempotency key."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID | None = None
    type: str = Field(
        min_length=1,
        max_length=100,
        description="A public event type; those the runner emits itself are refused.",
        json_schema_extra=_list_public_types,
    )
    payload: dict[str, Any] = Field(default_factory=dict)


EventList = Annotated[list[EventIn], Field(min_length=1, max_length=events.MAX_EVENTS_PER_CALL)]


class EventAccepted(BaseModel):
    """What became of one event: its ID, one job per handler, and whether it was a repeat."""

    event_id: uuid.UUID
    job_ids: list[uuid.UUID]
    duplicate: bool


class HandlerOut(BaseModel):
    """One handler of an event and its job."""

    handler: str
    job_id: uuid.UUID | None
    status: JobStatus | None
    attempts: int | None
    error_message: str | None
    applied_at: dt.datetime | None


class EventOut(BaseModel):
    """An event, its payload, and each handler's job state."""

    id: uuid.UUID
    type: str
    payload: dict[str, Any]
    created_at: dt.datetime
    handlers: list[HandlerOut]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EventAccepted | list[EventAccepted],
    responses={
        200: {
            "model": EventAccepted | list[EventAccepted],
            "description": "Every event was a repeat of one already stored",
        },
        **errors(401, 422),
    },
)
def post_events(
    body: Annotated[EventIn | EventList, Body()], session: SessionDep, response: Response
) -> EventAccepted | list[EventAccepted]:
    """Store events (of public types) and one job per handler in one transaction; a list in, a list out."""
    items = body if isinstance(body, list) else [body]
    accepted = events.ingest(session, [events.NewEvent(e.type, e.payload, e.id) for e in items], public_only=True)
    session.commit()
    if all(a.duplicate for a in accepted):
        response.status_code = status.HTTP_200_OK
    out = [EventAccepted(event_id=a.event_id, job_ids=a.job_ids, duplicate=a.duplicate) for a in accepted]
    return out if isinstance(body, list) else out[0]


@router.get("/{event_id}", response_model=EventOut, responses=errors(401, 404, 422))
def get_event(event_id: uuid.UUID, session: SessionDep) -> EventOut:
    """An event and the state of each handler's job."""
    event, states = events.get_event(session, event_id)
    handlers = [
        HandlerOut(
            handler=s.handler,
            job_id=s.job.id if s.job else None,
            status=s.job.status if s.job else None,
            attempts=s.job.attempts if s.job else None,
            error_message=s.job.error_message if s.job else None,
            applied_at=s.applied_at,
        )
        for s in states
    ]
    return EventOut(id=event.id, type=event.type, payload=event.payload, created_at=event.created_at, handlers=handlers)
