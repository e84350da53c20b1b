"""Typed SQLAlchemy 2.0 models of the job tables."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UTC = dt.timezone.utc


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware datetime on every database.

    PostgreSQL keeps ``timestamptz``; SQLite keeps naive text, so values are stored in UTC and read back
    with UTC attached.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


#: JSON, stored as JSONB on PostgreSQL.
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
#: A 64-bit key that still autoincrements on SQLite (which only does so for INTEGER PRIMARY KEY).
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base with constraint names Alembic can manage."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class JobStatus(enum.StrEnum):
    """Where a job is in its life. The row, not the broker message, is the truth."""

    #: Waiting for a worker; the ID has been (or will be, by the sweeper) sent to the broker.
    #: Reached on creation, on replay (from failed), on a lost lease, and on shutdown (interrupted).
    QUEUED = "queued"
    #: Claimed by one worker, which holds the claim token and renews the lease.
    #: Reached only from queued, retrying, or running with an expired lease.
    RUNNING = "running"
    #: Failed an attempt and waits for ``next_retry_at``; goes back to running when claimed.
    RETRYING = "retrying"
    #: Finished; its work committed in the same transaction as this status. Terminal.
    SUCCEEDED = "succeeded"
    #: Gave up: attempts spent, a PermanentError, or quarantined. Leaves only by a replay.
    FAILED = "failed"
    #: Dropped before it started (a batch cancel). Terminal.
    CANCELLED = "cancelled"


#: States a worker may claim a job from (besides running with an expired lease).
CLAIMABLE = (JobStatus.QUEUED, JobStatus.RETRYING)
#: States a job never leaves on its own.
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class AttemptOutcome(enum.StrEnum):
    """How one attempt (or history event) ended."""

    #: The handler returned and its work committed.
    SUCCEEDED = "succeeded"
    #: The handler raised; the job will be retried.
    ERROR = "error"
    #: The handler raised and the job failed for good.
    FAILED = "failed"
    #: The worker died while running it; its lease expired.
    LOST = "lost"
    #: The worker shut down before it finished; not counted against max attempts.
    INTERRUPTED = "interrupted"
    #: Not an attempt: an operator replayed the failed job (the row says when and why).
    REPLAYED = "replayed"


def _check_in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Job(Base):
    """One unit of background work; its args hold IDs and small values only."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_check_in("status", JobStatus), name="status"),
        Index("ix_jobs_status_kind", "status", "kind"),
        Index("ix_jobs_created_at_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(100), default="default")
    args: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    claim_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    next_retry_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    replay_count: Mapped[int] = mapped_column(Integer, default=0)


class JobAttempt(Base):
    """One attempt at a job (or a replay of it), kept for the job's history."""

    __tablename__ = "job_attempts"
    __table_args__ = (CheckConstraint(_check_in("outcome", AttemptOutcome), name="outcome"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: Which run of the job: 0, then one more for each replay.
    run: Mapped[int] = mapped_column(Integer, default=0)
    #: The attempt's number within its run (0 for a replay record).
    number: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)


# --- events ---


class Event(Base):
    """A domain event, stored (the outbox) in the transaction of the change that caused it."""

    __tablename__ = "events"

    #: The client's idempotency key when it gave one, else a fresh UUID.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: The ``event.handle`` job of each handler: ``[{"handler": name, "job_id": "..."}]``, in the
    #: order of the first answer (a JSON list, since JSONB does not keep the keys of an object in order).
    handler_jobs: Mapped[list[dict[str, str]]] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class EventApplication(Base):
    """The ledger: one row per (event, handler) whose effect was applied, written in the same
    transaction as that effect; its primary key makes a second application impossible."""

    __tablename__ = "event_applications"

    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), primary_key=True)
    handler: Mapped[str] = mapped_column(String(200), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    applied_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Product(Base):
    """The product projection: a starting inventory, then each applied ``order_created`` event."""

    __tablename__ = "products"
    __table_args__ = (CheckConstraint("inventory >= 0", name="inventory_not_negative"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    sku: Mapped[str] = mapped_column(String(100), unique=True)
    #: What the product started with; a rebuild starts again from here.
    initial_inventory: Mapped[int] = mapped_column(Integer)
    inventory: Mapped[int] = mapped_column(Integer)
    #: Orders applied.
    sales_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class OrgStats(Base):
    """The org projection: users registered, and when the latest of them was."""

    __tablename__ = "org_stats"

    org_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_count: Mapped[int] = mapped_column(Integer)
    #: ``created_at`` of the latest applied ``user_registered`` event (a max, so arrival order does
    #: not matter and a rebuild finds the same value).
    last_user_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Notification(Base):
    """A notification recorded by an event handler (a processed file, a completed batch)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


# --- files ---


class FileStatus(enum.StrEnum):
    """Where an uploaded file is in its processing (its ``file.process`` job has its own status)."""

    #: Stored on disk; its ``file.process`` job is queued.
    PENDING = "pending"
    #: Being read; committed blocks of rows and the checkpoint are visible. Also the state a
    #: file keeps between a failed attempt and its retry.
    PROCESSING = "processing"
    #: Every row read: counts and row errors are final. Terminal.
    PROCESSED = "processed"
    #: The file could not be read (``error_message`` says why) or its job gave up; a replay of the
    #: job resumes it from the checkpoint.
    FAILED = "failed"


class RecordStatus(enum.StrEnum):
    """What has been done with a record (later jobs, such as batches, build on the records)."""

    #: Taken from its file.
    IMPORTED = "imported"
    #: A batch's operation went through on it (added by the batches issue).
    PROCESSED = "processed"
    #: A batch's operation refused or raised on it; ``errors`` says why (added by the batches issue).
    FAILED = "failed"


class File(Base):
    """An uploaded CSV file: where it is stored, and how far its processing got (the checkpoint)."""

    __tablename__ = "files"
    __table_args__ = (CheckConstraint(_check_in("status", FileStatus), name="status"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    #: The client's filename, sanitized; metadata only, never part of a path.
    name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    #: The server-chosen name of the stored file under ``JOBRUNNER_STORAGE_DIR``.
    storage_key: Mapped[str] = mapped_column(String(100), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=FileStatus.PENDING)
    #: The ``file.process`` job (NULL once that job is pruned).
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    #: Data rows read so far (imported + rejected); blank lines are not rows.
    rows_total: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_imported: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    #: The first row errors: ``[{"row": n, "reason": "..."}]``.
    row_errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    #: The checkpoint: the byte offset just after the last row committed.
    byte_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Why the file failed.
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Record(Base):
    """One data row of a file, as a JSON object keyed by the file's header."""

    __tablename__ = "records"
    __table_args__ = (
        # One record per row of a file: a row written twice would fail, never duplicate.
        Index("ix_records_file_id_row_number", "file_id", "row_number", unique=True),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    #: The file's ID; no foreign key, on purpose: checked row by row it doubled the cost of an
    #: import (migration 0006). Only ``file.process`` writes records, for a file row it has just
    #: read; files are never deleted (one deleted by hand leaves its records to delete too).
    file_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    #: The row's number among the file's data rows: 1 for the first row after the header.
    row_number: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: No CHECK on purpose: jobs building on records (batches) add their own states.
    status: Mapped[str] = mapped_column(String(16), default=RecordStatus.IMPORTED)
    #: Why the last batch operation failed on it (None: it did not); added by migration 0004.
    errors: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)


# --- batches ---


class BatchStatus(enum.StrEnum):
    """Where a batch is. A replay of its failed chunks reopens it (back to running, a new run)."""

    #: Its ``batch.plan`` job has not split it into chunks yet.
    PLANNING = "planning"
    #: Chunks exist and some are not terminal yet.
    RUNNING = "running"
    #: Every chunk terminal, no record failed.
    COMPLETED = "completed"
    #: Every chunk terminal, some records failed (a chunk that failed for good fails all its records).
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    #: Cancelled, and every chunk terminal (the ones not started were skipped).
    CANCELLED = "cancelled"
    #: Its ``batch.plan`` job failed for good; a replay of that job plans it again.
    FAILED = "failed"


#: Batch states it leaves only by a replay.
BATCH_TERMINAL = (BatchStatus.COMPLETED, BatchStatus.COMPLETED_WITH_ERRORS, BatchStatus.CANCELLED, BatchStatus.FAILED)


class ChunkStatus(enum.StrEnum):
    """Where one chunk of a batch is (its ``batch.chunk`` job has its own status)."""

    #: Not counted yet: its job has not finished (or was replayed).
    PENDING = "pending"
    #: Its records were processed (each one processed or failed) and counted.
    SUCCEEDED = "succeeded"
    #: Its job failed for good: every record of it counted as failed.
    FAILED = "failed"
    #: Skipped by a cancel before it started.
    CANCELLED = "cancelled"


class Batch(Base):
    """An operation applied to many records, split into chunk jobs; the counts are exact."""

    __tablename__ = "batches"
    __table_args__ = (CheckConstraint(_check_in("status", BatchStatus), name="status"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    operation: Mapped[str] = mapped_column(String(100))
    #: The file whose records it covers, or None for a list of record IDs.
    file_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"), index=True)
    #: The record IDs it covers when it was given a list (sorted, without repeats).
    record_ids: Mapped[list[int] | None] = mapped_column(JSONType, nullable=True)
    chunk_size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(24), default=BatchStatus.PLANNING)
    #: The ``batch.plan`` job (NULL once pruned).
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    #: Records in the batch (known once planned).
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Records done, whatever their outcome; ``failed`` of them failed.
    processed: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    #: Chunks terminal in the current run (succeeded, failed for good, or cancelled).
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    #: The run: 0, then one more each time a replay reopens the batch.
    run: Mapped[int] = mapped_column(Integer, default=0)
    #: How many times completion fired (once per run); ``completed_run`` is the last run it fired for.
    completions: Mapped[int] = mapped_column(Integer, default=0)
    completed_run: Mapped[int | None] = mapped_column(Integer)
    #: Why planning failed.
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class BatchChunk(Base):
    """One chunk of a batch: its records (an ID range of the file, or a list) and what it counted."""

    __tablename__ = "batch_chunks"
    __table_args__ = (
        CheckConstraint(_check_in("status", ChunkStatus), name="status"),
        Index("ix_batch_chunks_batch_id_number", "batch_id", "number", unique=True),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    #: Its place in the batch: 0 for the first chunk.
    number: Mapped[int] = mapped_column(Integer)
    #: The ``batch.chunk`` job (NULL once pruned).
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    #: A file batch: the records of the file with ``first_id <= id <= last_id``.
    first_id: Mapped[int | None] = mapped_column(BigInteger)
    last_id: Mapped[int | None] = mapped_column(BigInteger)
    #: A list batch: the record IDs of this chunk.
    record_ids: Mapped[list[int] | None] = mapped_column(JSONType, nullable=True)
    #: Records in the chunk when it was planned.
    size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=ChunkStatus.PENDING)
    #: What this chunk last added to the batch's counts (a replayed chunk replaces its share).
    processed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
