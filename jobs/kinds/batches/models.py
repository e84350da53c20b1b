"""Tables of batches: an operation over many records, run as chunk jobs."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from jobs.kinds.files import models as _file_models  # noqa: F401 - batches refer to files and records
from jobs.models import Base, BigIntKey, JSONType, UTCDateTime, check_in


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
    __table_args__ = (
        CheckConstraint(check_in("status", BatchStatus), name="status"),
        # The dashboard's list, newest first (migration 0012).
        Index("ix_batches_created_at_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    operation: Mapped[str] = mapped_column(String(100))
    #: The file whose records it covers, or None for a list of record IDs.
    file_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"), index=True)
    #: The record IDs it covers when it was given a list (sorted, without repeats).
    record_ids: Mapped[list[int] | None] = mapped_column(JSONType, nullable=True)
    chunk_size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(24), default=BatchStatus.PLANNING)
    #: The ``batch.plan`` job (NULL once pruned). Indexed for the prune's ``ON DELETE SET NULL``.
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
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
        CheckConstraint(check_in("status", ChunkStatus), name="status"),
        Index("ix_batch_chunks_batch_id_number", "batch_id", "number", unique=True),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    #: Its place in the batch: 0 for the first chunk.
    number: Mapped[int] = mapped_column(Integer)
    #: The ``batch.chunk`` job (NULL once pruned). Indexed for the prune's ``ON DELETE SET NULL``.
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
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
