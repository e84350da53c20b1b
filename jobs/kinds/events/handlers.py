"""``event.handle``: one job runs one handler for one event, exactly once.

The shipped event types and their handlers live beside it: :mod:`jobs.kinds.events.shop` (orders,
users and their projections) and :mod:`jobs.kinds.events.notify` (notifications of processed files
and completed batches); importing this module registers them with the outbox.
"""

from __future__ import annotations

import uuid

import pydantic
from sqlalchemy.orm import Session

from jobs import registry
from jobs.kinds.events import notify, shop  # noqa: F401 - their event types and handlers register with the outbox
from jobs.kinds.events import outbox as events


class HandleEventArgs(pydantic.BaseModel):
    """``event.handle``: which event, and which of its type's handlers."""

    model_config = pydantic.ConfigDict(extra="forbid")

    event_id: uuid.UUID
    handler: str = pydantic.Field(min_length=1, max_length=200)


@registry.job_kind(events.HANDLE_KIND, args=HandleEventArgs, max_attempts=5)
def handle_event(session: Session, job: registry.RunningJob) -> None:
    """Apply one handler to one event, exactly once (see :func:`jobs.kinds.events.outbox.apply_handler`)."""
    events.apply_handler(session, job.args.event_id, job.args.handler, job_id=job.id)
