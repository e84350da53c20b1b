"""``batch.plan`` (split a batch into chunk jobs) and ``batch.chunk`` (apply its operation to one chunk).

Planning reads only record IDs: one query numbers the file's records by ID and groups them into
ranges of ``chunk_size`` (a window function, so the database does it in one pass), then the chunk
jobs and the chunk rows go in with one executemany each, and the job IDs are sent after the commit
(pipelined). A chunk reads its records, runs the operation on each in Python (a record that raises
fails alone), writes every result back in one statement, and counts itself in the batch row (see
:mod:`jobs.kinds.batches.service`). Operations are pure functions, so no record needs a SAVEPOINT: the only write
that could fail is the chunk's single bulk UPDATE, and then the chunk as a whole retries.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pydantic
from sqlalchemy import ColumnElement, CursorResult, bindparam, func, insert, select, text, update
from sqlalchemy.orm import Session

from jobs import errors, registry, store
from jobs.kinds.batches import errors as batch_errors
from jobs.kinds.batches import models as batch_models
from jobs.kinds.batches import service as batches
from jobs.kinds.batches.models import BatchStatus, ChunkStatus
from jobs.kinds.files import models as file_models
from jobs.kinds.files.models import RecordStatus

#: Planning a very large file must not be cut off by the default time limit.
PLAN_TIME_LIMIT_SECONDS = 3600

_T = TypeVar("_T")

_records = file_models.Record.__table__
_chunks = batch_models.BatchChunk.__table__

#: PostgreSQL: a chunk's results in one UPDATE, the rows passed as one JSON array.
_WRITE_RESULTS_PG = text(
    "UPDATE records SET data = v.data, status = v.status, errors = v.errors "
    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(id bigint, data jsonb, status text, errors jsonb) "
    "WHERE records.id = v.id"
)
#: Elsewhere: one executemany.
_WRITE_RESULTS = (
    update(_records)
    .where(_records.c.id == bindparam("b_id"))
    .values(data=bindparam("b_data"), status=bindparam("b_status"), errors=bindparam("b_errors"))
)


class PlanArgs(pydantic.BaseModel):
    """``batch.plan``: which batch."""

    model_config = pydantic.ConfigDict(extra="forbid")

    batch_id: uuid.UUID


class ChunkArgs(pydantic.BaseModel):
    """``batch.chunk``: which batch (kept as a string in the args, which ``jobctl replay --batch``
    filters on) and which of its chunks."""

    model_config = pydantic.ConfigDict(extra="forbid")

    batch_id: uuid.UUID
    number: int = pydantic.Field(ge=0)


# --- batch.plan ------------------------------------------------------------------------------------


def mark_plan_failed(session: Session, job: registry.RunningJob, error: BaseException) -> None:
    """Runs in the transaction that records the plan job's final failure: the batch shows
    ``failed`` and why (a replay of the job plans it again)."""
    batch_id = _arg(job.args, "batch_id", uuid.UUID)
    batch = session.get(batch_models.Batch, batch_id) if batch_id else None
    if batch is None or batch.status != BatchStatus.PLANNING:
        return
    batch.status = BatchStatus.FAILED
    batch.error_message = store.describe_error(error)["error_message"]
    batch.finished_at = store.utcnow()


@registry.job_kind(
    batches.PLAN_KIND, args=PlanArgs, on_failed=mark_plan_failed, time_limit_seconds=PLAN_TIME_LIMIT_SECONDS
)
def plan_batch(session: Session, job: registry.RunningJob) -> None:
    """Split the batch into chunks, each with its ``batch.chunk`` job, in this job's transaction."""
    try:
        batch = batches.lock_batch(session, job.args.batch_id)
    except batch_errors.BatchNotFound as exc:
        raise errors.PermanentError(str(exc)) from exc
    if batch.status not in (BatchStatus.PLANNING, BatchStatus.FAILED):
        return  # planned already
    batch.started_at, batch.error_message, batch.finished_at = store.utcnow(), None, None
    ranges = [] if batch.cancelled_at is not None else _plan_chunks(session, batch)
    job_ids = store.create_jobs(
        session, batches.CHUNK_KIND, [{"batch_id": str(batch.id), "number": n} for n in range(len(ranges))]
    )
    if ranges:
        session.execute(
            insert(_chunks),
            [
                {
                    "batch_id": batch.id,
                    "number": n,
                    "job_id": job_id,
                    "status": ChunkStatus.PENDING.value,
                    "processed": 0,
                    "failed": 0,
                    **chunk,
                }
                for n, (job_id, chunk) in enumerate(zip(job_ids, ranges, strict=True))  # one job per range
            ],
        )
    batch.status = BatchStatus.RUNNING
    batch.total = sum(chunk["size"] for chunk in ranges)
    batch.chunks_total = len(ranges)
    session.flush()
    if not ranges:  # an empty file, or cancelled before it was planned
        batches.complete_batch(session, batch.id)


def _plan_chunks(session: Session, batch: batch_models.Batch) -> list[dict[str, Any]]:
    """Each chunk's records: an ID range of the file (from one grouped query), or part of the list."""
    if batch.file_id is None:
        ids = batch.record_ids or []
        return [
            {
                "record_ids": ids[i : i + batch.chunk_size],
                "first_id": None,
                "last_id": None,
                "size": len(ids[i : i + batch.chunk_size]),
            }
            for i in range(0, len(ids), batch.chunk_size)
        ]
    position = func.row_number().over(order_by=_records.c.id) - 1
    # The SQL "/" of two integers: integer division on both databases (SQLAlchemy's "//" adds FLOOR,
    # which SQLite may lack).
    numbered = (
        select(_records.c.id, position.self_group().op("/")(batch.chunk_size).label("chunk"))
        .where(_records.c.file_id == batch.file_id)
        .subquery()
    )
    query = (
        select(func.min(numbered.c.id), func.max(numbered.c.id), func.count())
        .group_by(numbered.c.chunk)
        .order_by(numbered.c.chunk)
    )
    return [
        {"first_id": first, "last_id": last, "size": size, "record_ids": None}
        for first, last, size in session.execute(query)
    ]


# --- batch.chunk -----------------------------------------------------------------------------------


def fail_chunk_records(session: Session, job: registry.RunningJob, error: BaseException) -> None:
    """Runs in the transaction that records a chunk job's final failure (a handler that kept
    failing, or a worker that kept dying on it): every record of the chunk is marked ``failed`` with
    the chunk's error and counted as failed, and the chunk counts as done, so the batch completes."""
    batch_id, number = _arg(job.args, "batch_id", uuid.UUID), _arg(job.args, "number", int)
    chunk = _lock_chunk(session, batch_id, number) if batch_id is not None and number is not None else None
    if chunk is None or chunk.status != ChunkStatus.PENDING:
        return  # gone, or counted already (a replay that failed before it reopened the chunk)
    batch = session.get_one(batch_models.Batch, batch_id)  # the chunk's batch (a foreign key)
    details = store.describe_error(error)
    reason = f"the chunk failed: {details['error_type']}: {details['error_message']}"
    # Session.execute is typed Result; a DML statement's is a CursorResult, which has the rowcount.
    failed = cast(
        "CursorResult[Any]",
        session.execute(
            update(_records)
            .where(_chunk_records(batch, chunk))
            .values(status=RecordStatus.FAILED.value, errors=[reason])
        ),
    ).rowcount
    batches.finish_chunk(session, chunk, ChunkStatus.FAILED, processed=failed, failed=failed)


@registry.job_kind(batches.CHUNK_KIND, args=ChunkArgs, on_failed=fail_chunk_records)
def run_chunk(session: Session, job: registry.RunningJob) -> None:
    """Apply the batch's operation to each record of the chunk, write the results back in bulk, and
    count the chunk in the batch; a cancelled batch's chunk does no work."""
    args: ChunkArgs = job.args
    chunk = _lock_chunk(session, args.batch_id, args.number)
    if chunk is None:
        raise errors.PermanentError(f"batch {args.batch_id} has no chunk {args.number}")
    if chunk.status == ChunkStatus.FAILED:
        # Replayed on its own (not through store.replay_batch): reopen the chunk and its batch here.
        batches.reopen_batch_chunks(session, args.batch_id, [job.id])
        session.refresh(chunk)
    if chunk.status != ChunkStatus.PENDING:
        return  # counted already
    batch = session.get_one(batch_models.Batch, args.batch_id, populate_existing=True)  # the chunk's batch
    if batch.cancelled_at is not None:
        batches.finish_chunk(session, chunk, ChunkStatus.CANCELLED, processed=chunk.processed, failed=chunk.failed)
        return
    try:
        operation = batches.get_operation(batch.operation)
    except batch_errors.UnknownOperation as exc:
        raise errors.PermanentError(str(exc)) from exc
    # Every row fetched before any operation runs: no cursor stays open if one raises.
    rows = session.execute(select(_records.c.id, _records.c.data).where(_chunk_records(batch, chunk))).all()
    results = [batches.apply_operation(operation, row.id, row.data) for row in rows]
    _write_results(session, results)
    failed = sum(1 for result in results if result.status == RecordStatus.FAILED)
    batches.finish_chunk(session, chunk, ChunkStatus.SUCCEEDED, processed=len(results), failed=failed)


def _lock_chunk(session: Session, batch_id: uuid.UUID, number: int) -> batch_models.BatchChunk | None:
    query = (
        select(batch_models.BatchChunk)
        .where(batch_models.BatchChunk.batch_id == batch_id, batch_models.BatchChunk.number == number)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).first()


def _chunk_records(batch: batch_models.Batch, chunk: batch_models.BatchChunk) -> ColumnElement[bool]:
    if chunk.record_ids is not None:
        return _records.c.id.in_(chunk.record_ids)
    return (_records.c.file_id == batch.file_id) & _records.c.id.between(chunk.first_id, chunk.last_id)


def _write_results(session: Session, results: list[batches.RecordResult]) -> None:
    """Every result of the chunk in one statement (PostgreSQL) or one executemany."""
    if not results:
        return
    if session.get_bind().dialect.name == "postgresql":
        rows = [{"id": r.record_id, "data": r.data, "status": r.status.value, "errors": r.errors} for r in results]
        session.execute(_WRITE_RESULTS_PG, {"rows": json.dumps(rows, ensure_ascii=False, separators=(",", ":"))})
        return
    session.execute(
        _WRITE_RESULTS,
        [{"b_id": r.record_id, "b_data": r.data, "b_status": r.status.value, "b_errors": r.errors} for r in results],
    )


def _arg(args: Any, name: str, convert: Callable[[str], _T]) -> _T | None:
    """One argument of a hook's job: from the model, or from the raw dict if it no longer fits."""
    value = getattr(args, name, None) if not isinstance(args, dict) else args.get(name)
    try:
        return convert(str(value)) if value is not None else None
    except ValueError:
        return None
