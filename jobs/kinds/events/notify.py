"""Notifications: ``file.processed`` and ``batch.completed`` each leave a ``notifications`` row.

Both types are internal: only the runner emits them (``POST /events`` refuses them).
"""

from __future__ import annotations

import uuid

import pydantic
from sqlalchemy.orm import Session

from jobs import store
from jobs.kinds.events import models as event_models
from jobs.kinds.events import outbox as events

#: Ledger name of the notification handler (stable: renaming it would re-apply every event).
NOTIFY_HANDLER = "notify"


@events.event_type("file.processed")
class FileProcessed(pydantic.BaseModel):
    """An uploaded file was parsed (emitted by ``file.process`` when it finishes)."""

    file_id: uuid.UUID
    #: Rows stored and rows refused.
    records: int = pydantic.Field(default=0, ge=0)
    errors: int = pydantic.Field(default=0, ge=0)


@events.event_type("batch.completed")
class BatchCompleted(pydantic.BaseModel):
    """Every chunk of a batch run is terminal (emitted once per run by the batch)."""

    batch_id: uuid.UUID
    status: str = pydantic.Field(default="completed", max_length=50)
    total: int = pydantic.Field(default=0, ge=0)
    processed: int = pydantic.Field(default=0, ge=0)
    failed: int = pydantic.Field(default=0, ge=0)


# --- handlers -----------------------------------------------------------------------------------


@events.on("file.processed", name=NOTIFY_HANDLER)
def notify_file_processed(session: Session, event: events.StoredEvent) -> None:
    """Record that a file was processed."""
    payload: FileProcessed = event.payload
    _notify(session, event, f"file {payload.file_id} processed: {payload.records} records, {payload.errors} errors")


@events.on("batch.completed", name=NOTIFY_HANDLER)
def notify_batch_completed(session: Session, event: events.StoredEvent) -> None:
    """Record that a batch completed."""
    payload: BatchCompleted = event.payload
    _notify(
        session,
        event,
        f"batch {payload.batch_id} {payload.status}: {payload.processed} of {payload.total} "
        f"processed, {payload.failed} failed",
    )


def _notify(session: Session, event: events.StoredEvent, message: str) -> None:
    session.add(
        event_models.Notification(event_id=event.id, event_type=event.type, message=message, created_at=store.utcnow())
    )
    session.flush()
