"""Batches: an operation applied to many records, split into chunk jobs (``jobs.kinds.batches.handlers``).

- An **operation** is ``operation(data) -> data``, registered with ``@operation("name")``: it gets a
  copy of a record's data and returns the data to store, or raises (:class:`RecordRejected` with the
  problems, or anything else) to fail that record alone.
- :func:`create_batch` stores a batch and its ``batch.plan`` job; the plan creates the chunks.
- Counting: each chunk adds its share to the batch row with one atomic UPDATE in its own job's
  transaction (:func:`finish_chunk`); the job's fenced commit makes it land once per run of the job.
  A replayed chunk *replaces* its earlier share (the chunk row keeps what it added).
- Completion: that same UPDATE returns ``chunks_done``; the chunk that makes it equal
  ``chunks_total`` marks the batch finished with a conditional UPDATE (only from ``running``, so once
  per run: concurrent chunks queue on the batch row's lock) and emits ``batch.completed``, whose
  event ID is derived from (batch, run): even a second emit for one run would be stored once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, Select, case, exists, func, or_, select, union_all, update
from sqlalchemy.orm import Session

from jobs import db, models, registry, store
from jobs.kinds.batches import errors as batch_errors
from jobs.kinds.batches import models as batch_models
from jobs.kinds.batches.models import BatchStatus, ChunkStatus
from jobs.kinds.events import outbox as events
from jobs.kinds.files import models as file_models
from jobs.kinds.files.models import RecordStatus

#: The internal job kinds (registered in ``jobs.kinds.batches.handlers``).
PLAN_KIND = "batch.plan"
CHUNK_KIND = "batch.chunk"
#: The domain event a batch emits once per run when every chunk is terminal.
COMPLETED_EVENT = "batch.completed"
DEFAULT_CHUNK_SIZE = 500
MAX_CHUNK_SIZE = 10_000
#: Most record IDs one batch takes as a list (a file batch has no limit).
MAX_RECORD_IDS = 10_000
#: How many failed records ``GET /batches/{id}`` shows.
FAILED_SAMPLE_SIZE = 10

_batches = batch_models.Batch.__table__
_chunks = batch_models.BatchChunk.__table__
_records = file_models.Record.__table__
_jobs = models.Job.__table__

# --- operations -----------------------------------------------------------------------------------

#: Takes a copy of a record's data, returns the data to store; raises to fail that record.
Operation = Callable[[dict[str, Any]], dict[str, Any]]

_operations: dict[str, Operation] = {}


def operation(name: str) -> Callable[[Operation], Operation]:
    """Register the decorated function as the batch operation ``name``."""

    def register(func: Operation) -> Operation:
        if _operations.get(name, func) is not func:
            raise ValueError(f"batch operation {name!r} is already registered")
        _operations[name] = func
        return func

    return register


def get_operation(name: str) -> Operation:
    """The operation registered under ``name``.

    Raises:
        UnknownOperation: none is.
    """
    try:
        return _operations[name]
    except KeyError:
        known = ", ".join(sorted(_operations))
        raise batch_errors.UnknownOperation(f"unknown operation {name!r}; known: {known}") from None


#: Fields ``validate`` requires to be present and not blank.
REQUIRED_FIELDS = ("name", "email")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
#: What ``normalize`` turns into an integer: no leading zeros (so "007" stays an identifier), at
#: most 18 digits (fits a 64-bit integer).
_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,17})")


@operation("validate")
def validate(data: dict[str, Any]) -> dict[str, Any]:
    """Check the record: required fields present, ``email`` shaped like an email, ``quantity`` a
    non-negative integer where present. The data is stored unchanged.

    Raises:
        RecordRejected: with every problem found.
    """
    problems = [f"{field}: required" for field in REQUIRED_FIELDS if not str(data.get(field) or "").strip()]
    email = str(data.get("email") or "").strip()
    if email and not _EMAIL.fullmatch(email):
        problems.append(f"email: not an email address: {email!r}")
    quantity = data.get("quantity")
    if quantity not in (None, "") and not _is_non_negative_integer(quantity):
        problems.append(f"quantity: not a non-negative integer: {quantity!r}")
    if problems:
        raise batch_errors.RecordRejected(problems)
    return data


def _is_non_negative_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.strip().isdigit() and value.strip().isascii()


@operation("normalize")
def normalize(data: dict[str, Any]) -> dict[str, Any]:
    """Trim every string, lower-case emails (fields named ``email`` or ending in ``email``), and
    turn integer strings into integers."""
    normalized: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, str):
            value = value.strip()
            if key.lower().endswith("email"):
                value = value.lower()
            elif _INTEGER.fullmatch(value):
                value = int(value)
        normalized[key] = value
    return normalized


@dataclasses.dataclass(frozen=True, slots=True)
class RecordResult:
    """What an operation made of one record."""

    record_id: int
    data: dict[str, Any]
    status: RecordStatus
    errors: list[str] | None


def apply_operation(func: Operation, record_id: int, data: dict[str, Any]) -> RecordResult:
    """Run ``func`` on one record; whatever it raises fails this record only."""
    try:
        return RecordResult(record_id, func(dict(data)), RecordStatus.PROCESSED, None)
    except batch_errors.RecordRejected as exc:
        return RecordResult(record_id, data, RecordStatus.FAILED, exc.problems)
    except Exception as exc:  # per-record isolation: one bad record fails alone
        return RecordResult(record_id, data, RecordStatus.FAILED, [f"{type(exc).__name__}: {exc}"])


# --- creating -----------------------------------------------------------------------------------


def create_batch(
    session: Session,
    operation_name: str,
    *,
    file_id: uuid.UUID | None = None,
    record_ids: Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[batch_models.Batch, models.Job]:
    """Insert a batch over a processed file's records or a list of record IDs, and its
    ``batch.plan`` job, in ``session`` (the job's ID goes to the broker once it commits).

    Raises:
        UnknownOperation: no such operation.
        InvalidBatch: not exactly one of file / IDs, a chunk size out of range, an unknown file,
            an empty or oversized list, or IDs of no record.
        FileNotProcessed: the file is still being imported (or failed).
    """
    get_operation(operation_name)
    if (file_id is None) == (record_ids is None):
        raise batch_errors.InvalidBatch("give either file_id or record_ids (one of them)")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise batch_errors.InvalidBatch(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}, got {chunk_size}")
    ids: list[int] | None = None  # a file's batch takes all its records, known when it is planned
    if file_id is not None:
        _check_file(session, file_id)
    else:
        ids = _check_record_ids(session, record_ids or [])
    batch_id = uuid.uuid4()
    job = store.create_job(session, PLAN_KIND, {"batch_id": str(batch_id)})
    session.flush()  # the job row first: the batch row refers to it (no relationship orders them)
    batch = batch_models.Batch(
        id=batch_id,
        operation=operation_name,
        file_id=file_id,
        record_ids=ids,
        chunk_size=chunk_size,
        status=BatchStatus.PLANNING,
        job_id=job.id,
        total=len(ids) if ids is not None else 0,
        processed=0,
        failed=0,
        chunks_total=0,
        chunks_done=0,
        run=0,
        completions=0,
        created_at=store.utcnow(),
    )
    session.add(batch)
    session.flush()
    return batch, job


def _check_file(session: Session, file_id: uuid.UUID) -> None:
    file = session.get(file_models.File, file_id)
    if file is None:
        raise batch_errors.InvalidBatch(f"no file {file_id}")
    if file.status != file_models.FileStatus.PROCESSED:
        raise batch_errors.FileNotProcessed(f"file {file_id} is {file.status}; a batch needs a processed file")


def _check_record_ids(session: Session, record_ids: Sequence[int]) -> list[int]:
    ids = sorted(set(record_ids))
    if not ids:
        raise batch_errors.InvalidBatch("record_ids is empty")
    if len(ids) > MAX_RECORD_IDS:
        raise batch_errors.InvalidBatch(f"at most {MAX_RECORD_IDS} record IDs per batch, got {len(ids)}")
    found = set(session.scalars(select(_records.c.id).where(_records.c.id.in_(ids))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise batch_errors.InvalidBatch(f"{len(missing)} record ID(s) match no record, e.g. {missing[:5]}")
    return ids


# --- counting and completing -----------------------------------------------------------------------


def finish_chunk(
    session: Session, chunk: batch_models.BatchChunk, status: ChunkStatus, *, processed: int, failed: int
) -> bool:
    """Record a chunk's outcome and add its share to the batch in one atomic UPDATE (in the caller's
    transaction); complete the batch if this was its last chunk. ``chunk`` is the locked, pending
    chunk row. Returns whether the batch completed."""
    delta_processed, delta_failed = processed - chunk.processed, failed - chunk.failed
    chunk.status, chunk.processed, chunk.failed = status, processed, failed
    session.flush()
    return count_done(session, chunk.batch_id, chunks=1, processed=delta_processed, failed=delta_failed)


def count_done(session: Session, batch_id: uuid.UUID, *, chunks: int, processed: int = 0, failed: int = 0) -> bool:
    """Add to a batch's counts atomically; complete it if every chunk is now done."""
    row = session.execute(
        update(_batches)
        .where(_batches.c.id == batch_id)
        .values(
            processed=_batches.c.processed + processed,
            failed=_batches.c.failed + failed,
            chunks_done=_batches.c.chunks_done + chunks,
        )
        .returning(_batches.c.chunks_done, _batches.c.chunks_total, _batches.c.status)
    ).one()
    if row.chunks_done >= row.chunks_total and row.status == BatchStatus.RUNNING:
        return complete_batch(session, batch_id)
    return False


def complete_batch(session: Session, batch_id: uuid.UUID) -> bool:
    """Mark a running batch whose chunks are all done as finished and emit ``batch.completed``.

    One conditional UPDATE decides it (``running`` and every chunk done), so it happens once per run
    whoever calls it. Returns whether this call completed it.
    """
    final = case(
        (_batches.c.cancelled_at.is_not(None), BatchStatus.CANCELLED.value),
        (_batches.c.failed > 0, BatchStatus.COMPLETED_WITH_ERRORS.value),
        else_=BatchStatus.COMPLETED.value,
    )
    row = session.execute(
        update(_batches)
        .where(
            _batches.c.id == batch_id,
            _batches.c.status == BatchStatus.RUNNING.value,
            _batches.c.chunks_done >= _batches.c.chunks_total,
        )
        .values(
            status=final,
            finished_at=store.utcnow(),
            completions=_batches.c.completions + 1,
            completed_run=_batches.c.run,
        )
        .returning(_batches.c.status, _batches.c.run, _batches.c.total, _batches.c.processed, _batches.c.failed)
    ).first()
    if row is None:
        return False
    payload = {
        "batch_id": str(batch_id),
        "status": row.status,
        "total": row.total,
        "processed": row.processed,
        "failed": row.failed,
    }
    events.emit(session, COMPLETED_EVENT, payload, event_id=completion_event_id(batch_id, row.run))
    return True


def completion_event_id(batch_id: uuid.UUID, run: int) -> uuid.UUID:
    """The ID of the ``batch.completed`` event of one run of a batch (the same on every call)."""
    return uuid.uuid5(batch_id, f"{COMPLETED_EVENT}/{run}")


@registry.invariant
def check_batch_counters(session: Session, limit: int) -> list[registry.Violation]:
    """``batch-counters`` (``jobctl check``): a batch's counters equal the sums over its chunks, as
    :func:`finish_chunk`, :func:`count_done` and :func:`reopen_batch_chunks` keep them: ``processed``
    and ``failed`` the chunks' shares, ``chunks_total`` its chunks, ``chunks_done`` those not
    pending, and ``total`` their sizes once it has chunks. One grouped query."""
    pending = ChunkStatus.PENDING.value
    sums = (
        select(
            _chunks.c.batch_id,
            func.count().label("chunks"),
            func.sum(case((_chunks.c.status != pending, 1), else_=0)).label("done"),
            func.sum(_chunks.c.processed).label("processed"),
            func.sum(_chunks.c.failed).label("failed"),
            func.sum(_chunks.c.size).label("size"),
        )
        .group_by(_chunks.c.batch_id)
        .subquery()
    )
    expected = {
        "processed": func.coalesce(sums.c.processed, 0),
        "failed": func.coalesce(sums.c.failed, 0),
        "chunks_total": func.coalesce(sums.c.chunks, 0),
        "chunks_done": func.coalesce(sums.c.done, 0),
        "total": func.coalesce(sums.c.size, _batches.c.total),  # a batch without chunks: not compared
    }
    query = (
        select(_batches, *(value.label(f"expected_{name}") for name, value in expected.items()))
        .select_from(_batches.outerjoin(sums, sums.c.batch_id == _batches.c.id))
        .where(or_(*(_batches.c[name] != value for name, value in expected.items())))
        .limit(limit)
    )
    violations = []
    for row in session.execute(query).mappings():
        wrong = [
            f"{name} {row[name]} != {row[f'expected_{name}']}"
            for name in expected
            if row[name] != row[f"expected_{name}"]
        ]
        detail = f"{row['status']}: {', '.join(wrong)} (the sums over its chunks)"
        violations.append(registry.Violation("batch-counters", f"batch {row['id']}", detail))
    return violations


# --- cancelling -----------------------------------------------------------------------------------


def cancel_batch(session: Session, batch_id: uuid.UUID) -> batch_models.Batch:
    """Cancel a batch: chunks not started finish ``cancelled`` at once (their jobs too), running ones
    finish their work, and a chunk claimed later sees the cancel and does nothing. The batch ends
    ``cancelled`` when every chunk is terminal. Repeating it is harmless.

    Raises:
        BatchNotFound: there is no such batch.
        BatchNotCancellable: it has finished already.
    """
    batch = lock_batch(session, batch_id)
    if batch.status in batch_models.BATCH_TERMINAL:
        raise batch_errors.BatchNotCancellable(
            f"batch {batch_id} is {batch.status}; only an unfinished batch can be cancelled"
        )
    batch.cancelled_at = batch.cancelled_at or store.utcnow()
    session.flush()
    if batch.status == BatchStatus.PLANNING:
        # A plan job not started yet is dropped; one running holds the batch lock and sees the cancel.
        if batch.job_id is not None and store.cancel_jobs(session, [batch.job_id]):
            batch.status = BatchStatus.RUNNING
            session.flush()
            complete_batch(session, batch_id)
    else:
        pending = select(_chunks.c.job_id).where(
            _chunks.c.batch_id == batch_id, _chunks.c.status == ChunkStatus.PENDING.value
        )
        if store.cancel_jobs(session, pending):
            _count_cancelled_chunks(session, batch_id)
    session.refresh(batch)
    return batch


def _count_cancelled_chunks(session: Session, batch_id: uuid.UUID) -> None:
    job_cancelled = exists().where(_jobs.c.id == _chunks.c.job_id, _jobs.c.status == models.JobStatus.CANCELLED.value)
    # Session.execute is typed Result; a DML statement's is a CursorResult, which has the rowcount.
    cancelled = cast(
        "CursorResult[Any]",
        session.execute(
            update(_chunks)
            .where(_chunks.c.batch_id == batch_id, _chunks.c.status == ChunkStatus.PENDING.value, job_cancelled)
            .values(status=ChunkStatus.CANCELLED.value)
        ),
    ).rowcount
    if cancelled:
        count_done(session, batch_id, chunks=cancelled)


# --- reading --------------------------------------------------------------------------------------


def lock_batch(session: Session, batch_id: uuid.UUID) -> batch_models.Batch:
    """The batch, its row locked until the transaction ends (PostgreSQL; SQLite's writer lock does it).

    Raises:
        BatchNotFound: there is none.
    """
    return db.get_or_raise(
        session,
        batch_models.Batch,
        batch_id,
        batch_errors.BatchNotFound,
        what="batch",
        with_for_update=True,
        populate_existing=True,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """A batch and what follows from its counts."""

    batch: batch_models.Batch
    #: Records done (processed, failed or not) per record in the batch, as a percentage.
    percent: float
    records_per_second: float | None
    #: Up to :data:`FAILED_SAMPLE_SIZE` failed records: ``(record_id, errors)``.
    failed_sample: list[tuple[int, list[str]]]


def get_progress(session: Session, batch_id: uuid.UUID) -> Progress:
    """A batch's progress.

    Raises:
        BatchNotFound: there is no such batch.
    """
    batch = db.get_or_raise(session, batch_models.Batch, batch_id, batch_errors.BatchNotFound, what="batch")
    finished = batch.status in batch_models.BATCH_TERMINAL
    percent = 100.0 * batch.processed / batch.total if batch.total else (100.0 if finished else 0.0)
    rate = None
    if batch.started_at is not None:
        elapsed = ((batch.finished_at or store.utcnow()) - batch.started_at) / dt.timedelta(seconds=1)
        rate = batch.processed / elapsed if elapsed > 0 else None
    return Progress(batch, round(percent, 2), rate, _failed_sample(session, batch))


def _failed_sample(session: Session, batch: batch_models.Batch) -> list[tuple[int, list[str]]]:
    if batch.failed == 0:
        return []
    query = select(_records.c.id, _records.c.errors).where(_records.c.status == RecordStatus.FAILED.value)
    if batch.file_id is not None:
        query = query.where(_records.c.file_id == batch.file_id)
    else:
        query = query.where(_records.c.id.in_(batch.record_ids or []))
    rows = session.execute(query.order_by(_records.c.id).limit(FAILED_SAMPLE_SIZE))
    return [(row.id, list(row.errors or [])) for row in rows]


def job_ids_of(batch_id: uuid.UUID) -> Select[uuid.UUID]:
    """A SELECT of the IDs of a batch's jobs: its ``batch.plan`` job and its chunks' jobs (both
    found by the batch's key: ``batch_chunks`` by ``(batch_id, number)``, ``batches`` by ID)."""
    plan = select(_batches.c.job_id).where(_batches.c.id == batch_id, _batches.c.job_id.is_not(None))
    chunks = select(_chunks.c.job_id).where(_chunks.c.batch_id == batch_id, _chunks.c.job_id.is_not(None))
    return select(union_all(plan, chunks).subquery().c.job_id)


# --- replaying ------------------------------------------------------------------------------------


def replay_batch(
    session: Session, batch_id: uuid.UUID, *, reason: str | None = None, job_ids: Sequence[uuid.UUID] | None = None
) -> list[uuid.UUID]:
    """Replay a batch's failed chunk jobs (only those among ``job_ids`` if given) and reopen the batch
    for a new run, in the caller's transaction; a failed ``batch.plan`` job is replayed too, and the
    batch goes back to planning. Returns the jobs replayed.

    Raises:
        BatchNotFound: there is no such batch.
    """
    batch = lock_batch(session, batch_id)
    chunks = batch_models.BatchChunk.__table__
    query = (
        select(chunks.c.job_id)
        .join(_jobs, _jobs.c.id == chunks.c.job_id)
        .where(chunks.c.batch_id == batch_id, _jobs.c.status == models.JobStatus.FAILED.value)
    )
    if job_ids is not None:
        query = query.where(chunks.c.job_id.in_(job_ids))
    replayed = store.replay_jobs(session, list(session.scalars(query)), reason=reason)
    reopen_batch_chunks(session, batch_id, replayed)
    wanted = job_ids is None or batch.job_id in job_ids
    if (
        batch.status == batch_models.BatchStatus.FAILED
        and batch.job_id is not None
        and wanted
        and store.replay_jobs(session, [batch.job_id], reason=reason)
    ):
        replayed.append(batch.job_id)
        batch.status, batch.error_message, batch.finished_at = batch_models.BatchStatus.PLANNING, None, None
    session.flush()
    return replayed


def reopen_batch_chunks(session: Session, batch_id: uuid.UUID, job_ids: Sequence[uuid.UUID]) -> int:
    """Put the failed chunks of these (replayed) chunk jobs back to pending and reopen their batch:
    ``running``, those chunks no longer done, and a new run if its completion had fired for this
    one. The chunks' earlier share of the counts stays until they finish again (and replace it).
    Returns how many chunks were reopened."""
    if not job_ids:
        return 0
    chunks, batches = batch_models.BatchChunk.__table__, batch_models.Batch.__table__
    reopened = cast(
        "CursorResult[Any]",  # Session.execute is typed Result; a DML statement's is a CursorResult
        session.execute(
            update(chunks)
            .where(
                chunks.c.batch_id == batch_id,
                chunks.c.job_id.in_(job_ids),
                chunks.c.status == batch_models.ChunkStatus.FAILED.value,
            )
            .values(status=batch_models.ChunkStatus.PENDING.value)
        ),
    ).rowcount
    if reopened:
        finished = batches.c.status != batch_models.BatchStatus.RUNNING.value
        session.execute(
            update(batches)
            .where(batches.c.id == batch_id)
            .values(
                status=batch_models.BatchStatus.RUNNING.value,
                chunks_done=batches.c.chunks_done - reopened,
                run=batches.c.run + case((finished, 1), else_=0),
                finished_at=None,
            )
        )
    return reopened
