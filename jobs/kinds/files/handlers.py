"""``file.process``: read an uploaded CSV into ``records`` rows, a block at a time, resumably.

The stored file is read as bytes in chunks (see :func:`jobs.kinds.files.csvrows.read_chunks`), so the offset
after each block is exact. A block is at most ``block_rows`` lines and about 1 MiB; its rows are
written in one go and committed through ``job.checkpoint()`` together with the file row's counts,
first row errors and byte offset. A later attempt (a retry, a replay, a worker that took the job
over) starts from that offset with those counts: no row is written twice, none is skipped. The
unique index on ``(file_id, row_number)`` would refuse a row written twice rather than keep it.

How a block is written:

- PostgreSQL: its good rows become the text of one ``COPY records ... FROM STDIN``, each row's JSON
  object written by a template (see :class:`_RecordsCopy`), in the read-ahead thread while the block
  before is being written. The server gets exactly what a COPY of finished records gives it.
- SQLite: one multi-row INSERT.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import re
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pydantic
from sqlalchemy import exists, func, insert, or_, select
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
#: A ``str`` as a JSON string, as ``json.dumps(ensure_ascii=False)`` writes it (the C encoder).
_encode_json_string = json.encoder.encode_basestring
_BACKSLASH, _ESCAPED_BACKSLASH = "\\", "\\\\"
_T = TypeVar("_T")
#: Rows written as COPY text between two chances for the job's thread to run.
_PART_ROWS = 1_000
#: About as many characters of plain CSV (some hundreds of rows) likewise.
_PART_CHARS = 64 * 1024
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
        # On PostgreSQL, plain chunks skip csv.reader's rows (see _RecordsCopy.plain_text).
        width = len(header) if ingest.copy is not None else None
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
    """A chunk made ready to write: what goes to the database, and what counts."""

    #: How many rows of the file come before the block's (its row numbers follow on from there).
    rows_before: int
    #: Records read (good and bad), and the byte offset just after them.
    rows: int
    end_offset: int
    #: PostgreSQL: the good rows as ``COPY records`` text (see :class:`_RecordsCopy`).
    copy_text: bytes
    #: SQLite: the good rows as (row number, JSON object).
    objects: list[tuple[int, dict[str, str]]]
    #: (row number, reason) of each bad row.
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
        is_postgresql = session.get_bind().dialect.name == "postgresql"
        self.copy = _RecordsCopy(file.id, header) if is_postgresql else None
        #: Rows read so far by :meth:`prepare` (which runs ahead of :meth:`write`).
        self._rows_read = file.rows_total

    def prepare(self, chunk: csvrows.Chunk) -> _Block:
        """Sort the chunk's rows into good and bad, number them, and put the good ones in the form
        they are written in. Called once per chunk, in the file's order."""
        before, width = self._rows_read, self.width
        if chunk.plain_csv is not None and self.copy is not None:
            text = self.copy.plain_text(chunk.plain_csv, before + 1)
            if text is not None:
                self._rows_read += chunk.row_count
                return _Block(before, chunk.row_count, chunk.end_offset, text, [], [])
        good, errors = [], []
        for number, item in enumerate(chunk.rows, start=before + 1):
            if isinstance(item, list) and len(item) == width:
                good.append((number, item))
            elif isinstance(item, csvrows.BadRecord):
                errors.append((number, item.reason))
            else:
                errors.append((number, f"expected {width} fields, got {len(item)}"))
        self._rows_read += chunk.row_count
        if self.copy is not None:
            return _Block(before, chunk.row_count, chunk.end_offset, self.copy.text(good), [], errors)
        objects = [(number, dict(zip(self.header, fields, strict=True))) for number, fields in good]  # width checked
        return _Block(before, chunk.row_count, chunk.end_offset, b"", objects, errors)

    def write(self, block: _Block) -> None:
        """Write the block's good rows in one go, and count the block in the file row."""
        file = self.file
        assert block.rows_before == file.rows_total  # blocks are prepared and written in the same order
        if self.copy is not None:
            self.copy.write(self.session, block.copy_text)
        else:
            insert_records(self.session, file.id, block.objects)
        file.rows_total += block.rows
        file.rows_imported += block.rows - len(block.errors)
        file.rows_rejected += len(block.errors)
        if block.errors and len(self.row_errors) < MAX_ROW_ERRORS:
            kept = block.errors[: MAX_ROW_ERRORS - len(self.row_errors)]
            self.row_errors += [{"row": number, "reason": reason} for number, reason in kept]
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
    COPY on PostgreSQL, a multi-row INSERT on SQLite. ``data`` is any JSON object."""
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
    # COPY's text format: JSON from the encoder has no raw tab, newline or carriage return (it
    # escapes every control character), so a backslash is the only character COPY needs escaped.
    suffix = f"\t{file_models.RecordStatus.IMPORTED.value}\n"
    prefix = f"{file_id}\t"
    data = "".join([f"{prefix}{n}\t{_encode_json(row)}{suffix}" for n, row in rows])
    with db.psycopg_connection(conn).cursor() as cursor, cursor.copy(_COPY_RECORDS) as copy:
        copy.write(data.replace(_BACKSLASH, _ESCAPED_BACKSLASH).encode())


class _RecordsCopy:
    """CSV rows of one file as ``records`` rows, through ``COPY records ... FROM STDIN`` (text format)
    on the job's own connection, in its transaction.

    The JSON object of each row is written here, in the read-ahead thread, so the server gets exactly
    what a COPY of finished records gives it (``tests/benchmarks/ingest.py`` measures that COPY) and
    the Python work of block k+1 overlaps the server's work on block k. Earlier versions had the
    server build the objects (``jsonb_object`` over a temporary table the CSV was copied into): one
    more pass over every row on the server, which is what bounds the import.

    - :meth:`plain_text`, for a chunk of plain CSV (:attr:`csvrows.Chunk.plain_csv`) whose fields hold
      no quote, backslash or control character (the usual case): one regular expression per part of
      the chunk finds each line's fields, and a ``%`` template writes them as they are (such
      characters need no escaping in JSON or in COPY's text format), with no Python code per row.
    - :meth:`text`, for any rows: a ``%`` template with the header's keys already encoded, and a JSON
      string per field from the ``json`` module's C string encoder.
    """

    def __init__(self, file_id: uuid.UUID, header: list[str]) -> None:
        keys = [_encode_json_string(name) for name in header]
        status = file_models.RecordStatus.IMPORTED.value
        # "%" in a column name is written "%%" so that the template keeps it as it is.
        objects = ",".join(f"{key.replace('%', '%%')}:%s" for key in keys)
        self._line = f"{file_id}\t%d\t{{{objects}}}\t{status}\n"
        # A plain line: each field quoted (group 2n-1) or not (group 2n), with no quote, backslash or
        # control character in it; csv.reader reads such a line as these fields. A group that took
        # no part in the match is "" (re.findall), so the two groups together are the field.
        field = r'(?:"([^"\\\x00-\x1f]*)"|([^,"\\\x00-\x1f]*))'
        self._plain_line = re.compile(rf"^{','.join([field] * len(header))}\r?$", re.MULTILINE)
        # The fields of a plain line are written as they are: the keys as COPY's text format has
        # them (backslashes doubled), "%" as "%%" for the template.
        written = [key.replace(_BACKSLASH, _ESCAPED_BACKSLASH).replace("%", "%%") for key in keys]
        objects = ",".join(f'{key}:"%s%s"' for key in written)
        self._plain_row = f"{file_id}\t%d\t{{{objects}}}\t{status}\n"

    def plain_text(self, data: bytes, first_number: int) -> bytes | None:
        """The lines of ``data`` (plain CSV of the header's width) as COPY text, numbered from
        ``first_number`` on; None if a field of any line holds a quote, a backslash or a control
        character (then :meth:`text` takes the chunk's rows)."""
        text, parts, number, start = data.decode("utf-8"), [], first_number, 0
        while start < len(text):
            end = text.find("\n", start + _PART_CHARS)
            end = len(text) if end < 0 else end + 1
            # Without its last line end: "^" must not match once more after it (an empty match
            # there would stand in for a line that did not match, one field wide).
            part = text[start : end - 1] if text[end - 1] == "\n" else text[start:end]
            found = self._plain_line.findall(part)  # a tuple of 2 groups per field, for each line
            if len(found) != part.count("\n") + 1:
                return None
            # (number, *groups) for each line, through C-level maps only: no Python code per row.
            rows = map(tuple.__add__, zip(range(number, number + len(found))), found)
            parts.append("".join(map(self._plain_row.__mod__, rows)))
            number, start = number + len(found), end
            time.sleep(0)  # let the job's thread have the GIL, as csvrows does while it parses
        return "".join(parts).encode()

    def text(self, rows: list[tuple[int, list[str]]]) -> bytes:
        """``(row number, fields)`` rows (of the header's width) as COPY text."""
        line, encode, parts = self._line, _encode_json_string, []
        for start in range(0, len(rows), _PART_ROWS):
            parts.append("".join([line % (n, *map(encode, fields)) for n, fields in rows[start : start + _PART_ROWS]]))
            time.sleep(0)  # let the job's thread have the GIL, as csvrows does while it parses
        # The encoder escapes every control character, so no raw tab, newline or carriage return is
        # left; a backslash is the only character COPY's text format needs escaped.
        return "".join(parts).replace(_BACKSLASH, _ESCAPED_BACKSLASH).encode()

    @staticmethod
    def write(session: Session, data: bytes) -> None:
        """COPY ``text()`` output into ``records``, in the session's transaction."""
        if not data:
            return
        with db.psycopg_connection(session.connection()).cursor() as cursor:
            # synchronous_commit off for this transaction only: a checkpoint commit lost in a
            # database crash takes its rows and its offset with it (one transaction), so the job
            # redoes that block and no more. The job's final commit (its status) is a transaction of
            # its own, durable as usual.
            cursor.execute("SET LOCAL synchronous_commit = off")
            with cursor.copy(_COPY_RECORDS) as copy:
                copy.write(data)
