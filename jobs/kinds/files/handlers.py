"""``file.process``: read an uploaded CSV into ``records`` rows, a block at a time, resumably.

The stored file is read as bytes in chunks (see :func:`jobs.kinds.files.csvrows.read_chunks`), so the offset
after each block is exact. A block is at most ``block_rows`` lines and about 1 MiB; its rows are
written in one go and committed through ``job.checkpoint()`` together with the file row's counts,
first row errors and byte offset. A later attempt (a retry, a replay, a worker that took the job
over) starts from that offset with those counts: no row is written twice, none is skipped. The
unique index on ``(file_id, row_number)`` would refuse a row written twice rather than keep it.

How a block is written:

- PostgreSQL, every row good and the bytes plain CSV (the usual case): the block's bytes go as they
  are to ``COPY ... (FORMAT csv)`` into a temporary table of text columns, and one ``INSERT ...
  SELECT`` builds the JSON objects (``jsonb_object(header, ARRAY[columns])``) in the server. No
  Python object per field is made, and the server parses the CSV in C.
- PostgreSQL, a block with bad rows (or bytes COPY could read otherwise): its good rows, written
  again by ``csv.writer`` each with its row number, through the same stage.
- PostgreSQL, files wider than the stage allows (or a role without ``TEMP``): the good rows as JSON
  objects, through ``COPY`` in its text format.
- SQLite: one multi-row INSERT.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import io
import json
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pydantic
from sqlalchemy import exists, func, insert, or_, select, text
from sqlalchemy.orm import Session

from jobs import db, errors, registry, store
from jobs.kinds.events import outbox as events
from jobs.kinds.files import csvrows
from jobs.kinds.files import errors as file_errors
from jobs.kinds.files import models as file_models
from jobs.kinds.files import uploads as files
from jobs.kinds.files.models import FileStatus

#: The most lines read per block (fewer when the block reaches about 1 MiB first, or a quoted field
#: spans lines): one bulk write and one checkpoint each.
DEFAULT_BLOCK_ROWS = 10_000
#: How many row errors a file keeps (the count of rejected rows is always exact).
MAX_ROW_ERRORS = 100
#: A big file must not be cut off by the default time limit; it checkpoints as it goes anyway.
TIME_LIMIT_SECONDS = 3600

_records = file_models.Record.__table__
_files = file_models.File.__table__
_COPY_RECORDS = "COPY records (file_id, row_number, data, status) FROM STDIN"
#: Built once: ``json.dumps`` with options builds a new encoder on every call.
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_BACKSLASH, _ESCAPED_BACKSLASH = "\\", "\\\\"
_T = TypeVar("_T")
#: Rows written by csv.writer between two chances for the job's thread to run.
_PART_ROWS = 1_000
#: Marks the end of the items in :func:`_read_ahead`.
_END: Any = object()


class ProcessFileArgs(pydantic.BaseModel):
    """Which file to process, and at most how many lines go in each committed block."""

    model_config = pydantic.ConfigDict(extra="forbid")

    file_id: uuid.UUID
    block_rows: int = pydantic.Field(default=DEFAULT_BLOCK_ROWS, ge=1, le=1_000_000)


def mark_file_failed(session: Session, job: registry.RunningJob, error: BaseException) -> None:
    """Runs in the transaction that records the job's final failure: the file shows ``failed`` and
    why. Blocks committed before stay, with their checkpoint, so a replay of the job resumes."""
    file_id = _file_id(job.args)
    file = session.get(file_models.File, file_id) if file_id else None
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
    """Read the file's CSV rows into records from its checkpoint on, committing each block.

    Raises:
        PermanentError: the file cannot be read at all (missing, empty, a header that cannot be read).
    """
    args: ProcessFileArgs = job.args
    file = _load_file(session, args.file_id)
    if file.status == FileStatus.PROCESSED:
        return
    file.status = FileStatus.PROCESSING
    file.error_message = None
    with _open_stored(session, file) as stream:
        header, header_end = _read_header(stream)
        offset = max(file.byte_offset, header_end)
        ingest = _Ingest(session, file, header)
        # Without a stage, plain CSV is of no use: width None spares csvrows checking for it.
        width = len(header) if ingest.stage is not None else None
        chunks = csvrows.read_chunks(stream, offset=offset, max_lines=args.block_rows, width=width)
        blocks = _read_ahead(ingest.prepare(chunk) for chunk in chunks)
        with contextlib.closing(blocks):  # closed (its thread done) before the stream is
            for block in blocks:
                ingest.write(block)
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


def _load_file(session: Session, file_id: uuid.UUID) -> file_models.File:
    try:
        return files.get_file(session, file_id)
    except file_errors.FileNotFound as exc:
        raise errors.PermanentError(f"file {file_id} no longer exists") from exc


def _open_stored(session: Session, file: file_models.File) -> BinaryIO:
    path: Path = files.stored_path(registry.of(session).settings.storage_dir, file.storage_key)
    try:
        return path.open("rb")
    except FileNotFoundError as exc:
        raise errors.PermanentError(f"the stored file is missing ({file.storage_key} in the storage dir)") from exc


def _read_ahead(items: Iterator[_T]) -> Generator[_T, None, None]:
    """The items of ``items``, the next one read in a thread while the caller works on this one.

    Reading the file (Python) then overlaps writing the block before (mostly the database's time,
    during which psycopg releases the GIL). Closing this generator waits for the read in flight.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-read-ahead") as pool:
        pending = pool.submit(next, items, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, items, _END)
            yield item


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


@dataclasses.dataclass(frozen=True, slots=True)
class _Block:
    """A chunk made ready to write: what goes to the database, and what counts. Row numbers here
    count from 1 within the block; the block's place in the file is known when it is written."""

    #: Records read (good and bad), and the byte offset just after them.
    rows: int
    end_offset: int
    #: CSV for the stage: the chunk's own bytes (rows numbered in order), or its good rows written
    #: again with their number first (``numbered``). None without a stage.
    stage_csv: bytes | None
    numbered: bool
    #: The good rows as (number, JSON object), for files without a stage.
    objects: list[tuple[int, dict[str, str]]]
    #: (number, reason) of each bad row.
    errors: list[tuple[int, str]]


class _Ingest:
    """Turns chunks of records into ``records`` rows and keeps the file row's counts and
    checkpoint up to date (in the job's session: committed with the block).

    :meth:`prepare` (the Python work, done in the read-ahead thread: it touches no session) and
    :meth:`write` (the database work, in the job's thread) are apart so that they overlap.
    """

    def __init__(self, session: Session, file: file_models.File, header: list[str]) -> None:
        self.session = session
        self.file = file
        self.header = header
        self.width = len(header)
        self.row_errors = list(file.row_errors)
        self.stage = _CsvStage(header) if _CsvStage.fits(session, header) else None

    def prepare(self, chunk: csvrows.Chunk) -> _Block:
        """Sort the chunk's rows into good and bad, and put the good ones in the form they are written in."""
        if chunk.plain_csv is not None and self.stage is not None:
            return _Block(chunk.row_count, chunk.end_offset, chunk.plain_csv, False, [], [])
        good, errors, width = [], [], self.width
        for number, item in enumerate(chunk.rows, start=1):
            if isinstance(item, list) and len(item) == width:
                good.append((number, item))
            else:
                if isinstance(item, csvrows.BadRecord):
                    reason = item.reason
                else:
                    reason = f"expected {width} fields, got {len(item)}"
                errors.append((number, reason))
        if self.stage is not None:
            return _Block(chunk.row_count, chunk.end_offset, _CsvStage.write_numbered(good), True, [], errors)
        objects = [(number, dict(zip(self.header, fields, strict=True))) for number, fields in good]  # width checked
        return _Block(chunk.row_count, chunk.end_offset, None, False, objects, errors)

    def write(self, block: _Block) -> None:
        """Write the block's good rows in one go, and count the block in the file row."""
        file, before = self.file, self.file.rows_total
        if block.stage_csv is not None:
            assert self.stage is not None  # prepare() gives a block stage CSV only when there is a stage
            self.stage.copy(self.session, file.id, block.stage_csv, rows_before=before, numbered=block.numbered)
        else:
            insert_records(self.session, file.id, [(before + number, data) for number, data in block.objects])
        file.rows_total += block.rows
        file.rows_imported += block.rows - len(block.errors)
        file.rows_rejected += len(block.errors)
        if block.errors and len(self.row_errors) < MAX_ROW_ERRORS:
            kept = block.errors[: MAX_ROW_ERRORS - len(self.row_errors)]
            self.row_errors += [{"row": before + number, "reason": reason} for number, reason in kept]
            file.row_errors = list(self.row_errors)  # a new list: JSON columns do not track mutation
        file.byte_offset = block.end_offset


@registry.invariant
def check_file_counts(session: Session, limit: int) -> list[registry.Violation]:
    """``file-counts`` (``jobctl check``): a file's ``rows_imported`` equals its records and
    ``rows_total`` its imported plus rejected rows (each block's rows and counts commit together,
    see :meth:`_Ingest.write`); no record belongs to a file that does not exist. Grouped queries."""
    per_file = select(_records.c.file_id, func.count().label("records")).group_by(_records.c.file_id).subquery()
    records = func.coalesce(per_file.c.records, 0)
    query = (
        select(
            _files.c.id,
            _files.c.status,
            _files.c.rows_total,
            _files.c.rows_imported,
            _files.c.rows_rejected,
            records.label("records"),
        )
        .select_from(_files.outerjoin(per_file, per_file.c.file_id == _files.c.id))
        .where(
            or_(
                _files.c.rows_imported != records,
                _files.c.rows_total != _files.c.rows_imported + _files.c.rows_rejected,
            )
        )
        .limit(limit)
    )
    violations = []
    for row in session.execute(query):
        wrong = []
        if row.rows_imported != row.records:
            wrong.append(f"rows_imported {row.rows_imported}, but {row.records} records")
        if row.rows_total != row.rows_imported + row.rows_rejected:
            wrong.append(f"rows_total {row.rows_total} != {row.rows_imported} imported + {row.rows_rejected} rejected")
        violations.append(registry.Violation("file-counts", f"file {row.id}", f"{row.status}: {'; '.join(wrong)}"))
    orphans = (
        select(_records.c.file_id, func.count().label("records"))
        .where(~exists().where(_files.c.id == _records.c.file_id))
        .group_by(_records.c.file_id)
        .limit(max(limit - len(violations), 0))
    )
    violations += [
        registry.Violation("file-counts", f"file {row.file_id}", f"no such file, but {row.records} records of it")
        for row in session.execute(orphans)
    ]
    return violations


def insert_records(session: Session, file_id: uuid.UUID, rows: list[tuple[int, dict[str, Any]]]) -> None:
    """Insert ``(row_number, data)`` rows of a file in one statement, in the session's transaction:
    COPY on PostgreSQL, a multi-row INSERT on SQLite."""
    if not rows:
        return
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        conn.execute(
            insert(_records),
            [
                {"file_id": file_id, "row_number": n, "data": data, "status": file_models.RecordStatus.IMPORTED.value}
                for n, data in rows
            ],
        )
        return
    # COPY's text format, built here in one string: faster than a write_row() call per row. JSON
    # from the encoder has no raw tab, newline or carriage return (it escapes every control
    # character), so a backslash is the only character COPY needs escaped.
    suffix = f"\t{file_models.RecordStatus.IMPORTED.value}\n"
    prefix = f"{file_id}\t"
    data = "".join(
        [f"{prefix}{n}\t{_encode_json(row).replace(_BACKSLASH, _ESCAPED_BACKSLASH)}{suffix}" for n, row in rows]
    )
    # psycopg's COPY runs on the session's own connection, so it is part of the job's transaction.
    with db.psycopg_connection(conn).cursor() as cursor, cursor.copy(_COPY_RECORDS) as copy:
        copy.write(data.encode())


class _CsvStage:
    """CSV rows of one header width into ``records`` on PostgreSQL: ``COPY ... (FORMAT csv)`` into a
    temporary table of text columns ``c1 .. cN`` and a row number ``n``, then one ``INSERT ...
    SELECT`` that builds each row's JSON object in the server.

    The table lives as long as the connection (``CREATE TEMP TABLE IF NOT EXISTS``: a pooled
    connection keeps it for the next file of that width) and is emptied before each use. Record IDs
    follow the stage's scan order, which for a temporary table (never scanned in parallel) is the
    order the rows were copied in, the file's.
    """

    #: Wider files take the JSON path. A row of PostgreSQL must fit in 8,160 bytes after TOAST has
    #: moved out every value longer than its 18-byte pointer: 200 columns always do, 1,000 columns
    #: of 30 bytes do not ("row is too big").
    MAX_COLUMNS = 200

    def __init__(self, header: list[str]) -> None:
        self.header = header
        table = f"pg_temp.jobrunner_csv_stage_{len(header)}"  # pg_temp: never a table of that name elsewhere
        names = [f"c{n}" for n in range(1, len(header) + 1)]
        columns = ", ".join(names)
        # One round trip (simple query protocol, no parameters). synchronous_commit off for this
        # transaction only: a checkpoint commit lost in a database crash takes its rows and its
        # offset with it (one transaction), so the job redoes that block and no more. The job's
        # final commit (its status) is a transaction of its own, durable as usual.
        self._prepare = (
            "SET LOCAL synchronous_commit = off; "
            f"CREATE TEMP TABLE IF NOT EXISTS {table} "
            f"(n integer GENERATED BY DEFAULT AS IDENTITY, {', '.join(f'{name} text' for name in names)}); "
            f"TRUNCATE {table} RESTART IDENTITY"
        )
        # FORCE_NOT_NULL: an unquoted empty field is an empty string, as csv.reader reads it.
        options = f"(FORMAT csv, FORCE_NOT_NULL ({columns}), ENCODING 'UTF8')"
        self._copy_plain = f"COPY {table} ({columns}) FROM STDIN {options}"  # n: 1, 2, ... in order
        self._copy_numbered = f"COPY {table} (n, {columns}) FROM STDIN {options}"
        self._insert = (
            "INSERT INTO records (file_id, row_number, data, status) "
            f"SELECT %s, %s + n, jsonb_object(%s::text[], ARRAY[{columns}]), %s FROM {table}"
        )

    @classmethod
    def fits(cls, session: Session, header: list[str]) -> bool:
        """Whether files with this header go through a stage: PostgreSQL, not too wide, and a role
        that may create temporary tables (some hardened set-ups revoke ``TEMP``)."""
        if session.get_bind().dialect.name != "postgresql" or len(header) > cls.MAX_COLUMNS:
            return False
        return bool(session.scalar(text("SELECT has_database_privilege(current_database(), 'TEMP')")))

    @staticmethod
    def write_numbered(rows: list[tuple[int, list[str]]]) -> bytes:
        """``(number, fields)`` rows as CSV for :meth:`copy` with ``numbered``, whatever the fields hold."""
        # Lines end in "\r\n", so csv.writer quotes every field holding either (with "\n" alone it
        # would leave a lone "\r" bare, which COPY refuses); each line starts with its number, never
        # with COPY's end-of-data mark; FORCE_NOT_NULL keeps bare empty fields empty.
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        for start in range(0, len(rows), _PART_ROWS):
            writer.writerows([number, *fields] for number, fields in rows[start : start + _PART_ROWS])
            time.sleep(0)  # let the job's thread have the GIL, as csvrows does while it parses
        return out.getvalue().encode()

    def copy(
        self, session: Session, file_id: uuid.UUID, data: bytes, *, rows_before: int, numbered: bool = False
    ) -> None:
        """Insert the rows of ``data`` as the file's records numbered from ``rows_before + 1`` on, in
        the session's transaction. ``data`` is plain CSV of this width (see
        :attr:`csvrows.Chunk.plain_csv`), or with ``numbered`` what :meth:`write_numbered` made."""
        if data:
            self._run(session, self._copy_numbered if numbered else self._copy_plain, data, file_id, rows_before)

    def _run(self, session: Session, copy_sql: str, data: bytes, file_id: uuid.UUID, rows_before: int) -> None:
        driver = db.psycopg_connection(session.connection())
        with driver.cursor() as cursor:
            cursor.execute(self._prepare)
            with cursor.copy(copy_sql) as copy:
                copy.write(data)
            cursor.execute(self._insert, (file_id, rows_before, self.header, file_models.RecordStatus.IMPORTED.value))
