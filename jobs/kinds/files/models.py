"""Tables of uploaded files and the records imported from them."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

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

from jobs.models import Base, BigIntKey, JSONType, UTCDateTime, check_in


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
    __table_args__ = (
        CheckConstraint(check_in("status", FileStatus), name="status"),
        # The dashboard's list, newest first (migration 0012).
        Index("ix_files_created_at_id", "created_at", "id"),
    )

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
