"""``file.process``: read an uploaded CSV into ``records`` rows, a block at a time, resumably.

The stored file is read as bytes (see :mod:`jobs.csvrows`), so the offset after each record is
exact. Rows are written in blocks of ``block_rows`` (one COPY on PostgreSQL, one multi-row INSERT on
SQLite); each full block is committed through ``job.checkpoint()`` together with the file row's
counts, first row errors and byte offset. A later attempt (a retry, a replay, a worker that took the
job over) starts from that offset with those counts: no row is written twice, none is skipped. The
unique index on ``(file_id, row_number)`` would refuse a row written twice rather than keep it.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pydantic
from sqlalchemy import insert
from sqlalchemy.orm import Session

from jobs import csvrows, errors, events, files, models, registry, store
from jobs.config import get_settings
from jobs.models import FileStatus

#: Rows read (imported or rejected) per block: one bulk write and one checkpoint each.
DEFAULT_BLOCK_ROWS = 10_000
#: How many row errors a file keeps (the count of rejected rows is always exact).
MAX_ROW_ERRORS = 100
#: A big file must not be cut off by the default time limit; it checkpoints as it goes anyway.
TIME_LIMIT_SECONDS = 3600

_records = models.Record.__table__
_COPY_RECORDS = "COPY records (file_id, row_number, data, status) FROM STDIN"
#: Built once: ``json.dumps`` with options builds a new encoder on every call.
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_BACKSLASH, _ESCAPED_BACKSLASH = "\\", "\\\\"


class ProcessFileArgs(pydantic.BaseModel):
    """Which file to process, and how many rows go in each committed block."""

    model_config = pydantic.ConfigDict(extra="forbid")

    file_id: uuid.UUID
    block_rows: int = pydantic.Field(default=DEFAULT_BLOCK_ROWS, ge=1, le=1_000_000)


def mark_file_failed(session: Session, job: registry.RunningJob, error: BaseException) -> None:
    """Runs in the transaction that records the job's final failure: the file shows ``failed`` and
    why. Blocks committed before stay, with their checkpoint, so a replay of the job resumes."""
    file_id = _file_id(job.args)
    file = session.get(models.File, file_id) if file_id else None
    if file is None:
        return
    file.status = FileStatus.FAILED
    file.error_message = store.describe_error(error)["error_message"]
    file.finished_at = store.utcnow()


def _file_id(args: Any) -> uuid.UUID | None:
    # The args are the raw dict if they no longer fit the model (that is the failure then).
    if isinstance(args, ProcessFileArgs):
        return args.file_id
    try:
        return uuid.UUID(str(args.get("file_id")))
    except (AttributeError, ValueError):
        return None


@registry.job_kind(
    "file.process", args=ProcessFileArgs, on_failed=mark_file_failed, time_limit_seconds=TIME_LIMIT_SECONDS
)
def process_file(session: Session, job: registry.RunningJob) -> None:
    """Read the file's CSV rows into records from its checkpoint on, committing each full block.

    Raises:
        PermanentError: the file cannot be read at all (missing, empty, a header that cannot be read).
    """
    args: ProcessFileArgs = job.args
    file = _load_file(session, args.file_id)
    if file.status == FileStatus.PROCESSED:
        return
    file.status = FileStatus.PROCESSING
    file.error_message = None
    with _open_stored(file) as stream:
        header, header_end = _read_header(stream)
        offset = max(file.byte_offset, header_end)
        stream.seek(offset)
        ingest = _Ingest(session, file, header)
        for block in _blocks(csvrows.read_records(stream, offset=offset), args.block_rows):
            ingest.write_block(block)
            if len(block) == args.block_rows:
                job.checkpoint()
    file.status = FileStatus.PROCESSED
    file.finished_at = store.utcnow()
    # In the job's own session: the event exists only if the import commits. Its ID is derived
    # from the file, so the event cannot be stored twice.
    events.emit(
        session,
        "file.processed",
        {"file_id": str(file.id), "records": file.rows_imported, "errors": file.rows_rejected},
        event_id=uuid.uuid5(file.id, "file.processed"),
    )


def _load_file(session: Session, file_id: uuid.UUID) -> models.File:
    try:
        return files.get_file(session, file_id)
    except errors.FileNotFound as exc:
        raise errors.PermanentError(f"file {file_id} no longer exists") from exc


def _open_stored(file: models.File) -> BinaryIO:
    path: Path = files.stored_path(get_settings().storage_dir, file.storage_key)
    try:
        return path.open("rb")
    except FileNotFoundError as exc:
        raise errors.PermanentError(f"the stored file is missing ({file.storage_key} in the storage dir)") from exc


def _read_header(stream: BinaryIO) -> tuple[list[str], int]:
    """The column names and the byte offset where the data rows start."""
    first = next(csvrows.read_records(stream), None)
    if first is None:
        raise errors.PermanentError("the file has no header row (it is empty or blank)")
    if isinstance(first, csvrows.BadRecord):
        raise errors.PermanentError(f"the header row cannot be read: {first.reason}")
    duplicates = sorted({name for name in first.fields if first.fields.count(name) > 1})
    if duplicates:
        raise errors.PermanentError(f"the header row names a column twice: {', '.join(map(repr, duplicates))}")
    return first.fields, first.end_offset


def _blocks(records: Iterable[csvrows.Record | csvrows.BadRecord], size: int) -> Iterator[list[Any]]:
    iterator = iter(records)
    while block := list(itertools.islice(iterator, size)):
        yield block


class _Ingest:
    """Turns blocks of records into ``records`` rows and keeps the file row's counts and
    checkpoint up to date (in the job's session: committed with the block)."""

    def __init__(self, session: Session, file: models.File, header: list[str]) -> None:
        self.session = session
        self.file = file
        self.header = header
        self.width = len(header)
        self.row_errors = list(file.row_errors)

    def write_block(self, block: list[csvrows.Record | csvrows.BadRecord]) -> None:
        """Write the block's good rows in one statement; count and keep its bad ones."""
        file = self.file
        first = file.rows_total + 1
        rows, rejected = [], 0
        for number, item in enumerate(block, start=first):
            reason = item.reason if isinstance(item, csvrows.BadRecord) else self._check(item.fields)
            if reason is None:
                rows.append((number, dict(zip(self.header, item.fields))))
            else:
                rejected += 1
                if len(self.row_errors) < MAX_ROW_ERRORS:
                    self.row_errors.append({"row": number, "reason": reason})
        insert_records(self.session, file.id, rows)
        file.rows_total += len(block)
        file.rows_imported += len(rows)
        file.rows_rejected += rejected
        if rejected:
            file.row_errors = list(self.row_errors)  # a new list: JSON columns do not track mutation
        file.byte_offset = block[-1].end_offset

    def _check(self, fields: list[str]) -> str | None:
        if len(fields) != self.width:
            return f"expected {self.width} fields, got {len(fields)}"
        return None


def insert_records(session: Session, file_id: uuid.UUID, rows: list[tuple[int, dict[str, Any]]]) -> None:
    """Insert ``(row_number, data)`` rows of a file in one statement, in the session's transaction:
    COPY on PostgreSQL, a multi-row INSERT on SQLite."""
    if not rows:
        return
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        conn.execute(
            insert(_records),
            [{"file_id": file_id, "row_number": n, "data": data, "status": models.RecordStatus.IMPORTED.value}
             for n, data in rows],
        )
        return
    # COPY's text format, built here in one string: faster than a write_row() call per row. JSON
    # from the encoder has no raw tab, newline or carriage return (it escapes every control
    # character), so a backslash is the only character COPY needs escaped.
    suffix = f"\t{models.RecordStatus.IMPORTED.value}\n"
    prefix = f"{file_id}\t"
    data = "".join(
        [f"{prefix}{n}\t{_encode_json(row).replace(_BACKSLASH, _ESCAPED_BACKSLASH)}{suffix}" for n, row in rows]
    )
    # psycopg's COPY runs on the session's own connection, so it is part of the job's transaction.
    with conn.connection.driver_connection.cursor() as cursor, cursor.copy(_COPY_RECORDS) as copy:
        copy.write(data.encode())
