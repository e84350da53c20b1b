"""``/batches``: run an operation over a file's records or a list of records, follow it, cancel it."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.deps import ReadSessionDep, SessionDep
from api.responses import errors
from jobs.kinds.batches import service as batches
from jobs.kinds.batches.models import BatchStatus

router = APIRouter(prefix="/batches", tags=["batches"])

#: A record ID: a positive 64-bit integer.
RecordId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class BatchRequest(BaseModel):
    """An operation over the records of a processed file, or over a list of record IDs."""

    model_config = ConfigDict(extra="forbid")

    operation: str = Field(min_length=1, max_length=100, description="A registered operation: validate, normalize.")
    file_id: uuid.UUID | None = None
    record_ids: list[RecordId] | None = Field(default=None, min_length=1, max_length=batches.MAX_RECORD_IDS)
    chunk_size: int = Field(default=batches.DEFAULT_CHUNK_SIZE, ge=1, le=batches.MAX_CHUNK_SIZE)

    @model_validator(mode="after")
    def _one_source(self) -> BatchRequest:
        if (self.file_id is None) == (self.record_ids is None):
            raise ValueError("give either file_id or record_ids (one of them)")
        return self


class BatchAccepted(BaseModel):
    """A batch was stored and its ``batch.plan`` job queued."""

    batch_id: uuid.UUID
    job_id: uuid.UUID


class FailedRecord(BaseModel):
    """A record the operation failed on, and why."""

    record_id: int
    errors: list[str]


class BatchOut(BaseModel):
    """A batch and its progress. ``processed`` counts every record done (``failed`` of them failed)."""

    id: uuid.UUID
    operation: str
    status: BatchStatus
    file_id: uuid.UUID | None
    chunk_size: int
    total: int
    processed: int
    failed: int
    percent: float
    chunks_done: int
    chunks_total: int
    #: 0, then one more each time a replay of failed chunks reopened the batch.
    run: int
    #: How many runs completed (``batch.completed`` was emitted once for each).
    completions: int
    records_per_second: float | None
    failed_sample: list[FailedRecord]
    job_id: uuid.UUID | None
    error_message: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    cancelled_at: dt.datetime | None


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=BatchAccepted, responses=errors(401, 409, 422))
def create_batch(request: BatchRequest, session: SessionDep) -> BatchAccepted:
    """Store a batch and queue its planning. Unknown operation or file, bad IDs: 422; a file not
    processed yet: 409."""
    batch, job = batches.create_batch(
        session,
        request.operation,
        file_id=request.file_id,
        record_ids=request.record_ids,
        chunk_size=request.chunk_size,
    )
    session.commit()
    return BatchAccepted(batch_id=batch.id, job_id=job.id)


@router.get("/{batch_id}", response_model=BatchOut, responses=errors(401, 404, 422))
def get_batch(batch_id: uuid.UUID, session: ReadSessionDep) -> BatchOut:
    """A batch's status, counts, chunks done, rate and a sample of failed records."""
    return _batch_out(batches.get_progress(session, batch_id))


@router.post(
    "/{batch_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchOut,
    responses=errors(401, 404, 409, 422),
)
def cancel_batch(batch_id: uuid.UUID, session: SessionDep) -> BatchOut:
    """Cancel a batch: chunks not started are skipped, running ones finish. Finished already: 409."""
    batches.cancel_batch(session, batch_id)
    session.commit()
    return _batch_out(batches.get_progress(session, batch_id))


def _batch_out(progress: batches.Progress) -> BatchOut:
    batch = progress.batch
    return BatchOut(
        id=batch.id,
        operation=batch.operation,
        status=BatchStatus(batch.status),
        file_id=batch.file_id,
        chunk_size=batch.chunk_size,
        total=batch.total,
        processed=batch.processed,
        failed=batch.failed,
        percent=progress.percent,
        chunks_done=batch.chunks_done,
        chunks_total=batch.chunks_total,
        run=batch.run,
        completions=batch.completions,
        records_per_second=progress.records_per_second,
        failed_sample=[FailedRecord(record_id=i, errors=e) for i, e in progress.failed_sample],
        job_id=batch.job_id,
        error_message=batch.error_message,
        created_at=batch.created_at,
        started_at=batch.started_at,
        finished_at=batch.finished_at,
        cancelled_at=batch.cancelled_at,
    )
