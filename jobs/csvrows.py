"""Read CSV records from a byte stream, knowing the exact byte offset at the end of each record.

A job that stops mid-file resumes by seeking to the offset of the last record it committed, so
offsets must be exact, and a text-mode file cannot give them (``tell()`` on a text stream is an
opaque cookie). So the stream is read in binary, one physical line at a time, each line decoded on
its own, and the lines are fed to :func:`csv.reader`. The reader pulls lines lazily, only as many as
the record needs (a quoted field may hold newlines, so a record can span several lines), and never
reads ahead: once it hands a record back, the bytes consumed so far end exactly at that record.

A line that is not UTF-8, holds a NUL, or is longer than :data:`MAX_LINE_BYTES` makes its record a
:class:`BadRecord` and reading goes on with the next record. Memory stays bounded: a line is read at
most :data:`MAX_LINE_BYTES` at a time, and ``csv`` refuses a field over its field size limit.

Reading line by line costs about 3.6 us a record in Python, five times what one ``csv.reader`` over
a whole decoded piece costs. So :func:`read_chunks` parses up to :data:`CHUNK_BYTES` at once and
knows the byte offset only at the end of each chunk, which is all a checkpoint needs; a piece with
anything :func:`read_records` would refuse (bad UTF-8, a NUL, bad quoting, a quoted field running
past the piece) is cut before the first such record, and that record is read line by line as above,
so both readers give the same records for the same bytes. A chunk's bytes also come back, for
``COPY ... (FORMAT csv)`` to take as they are, when PostgreSQL is sure to read the same records.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import itertools
import re
import time
from collections.abc import Iterator
from typing import BinaryIO

#: The longest physical line taken; a longer one is skipped (to its newline) as a bad record.
MAX_LINE_BYTES = 1024 * 1024
#: The most bytes :func:`read_chunks` parses at once (a chunk never holds a line longer than a line
#: :func:`read_records` takes).
CHUNK_BYTES = MAX_LINE_BYTES
_BOM = b"\xef\xbb\xbf"
#: Records counted between two chances for another thread to run.
_PART_RECORDS = 1_000
#: A quoted field (``""`` is a quote within it) followed by a delimiter or a line end, or any other
#: quote. Possessive, so it never backtracks.
_QUOTED_FIELD = re.compile(rb'"(?:[^"]|"")*+"(?=[,\r\n]|\Z)|"')


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """A record read whole: its fields, and the byte offset just after it."""

    fields: list[str]
    end_offset: int


@dataclasses.dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that could not be read, why, and the byte offset just after it."""

    reason: str
    end_offset: int


class Chunk:
    """Consecutive records, blank lines skipped, and the byte offset just after the last one."""

    __slots__ = ("_rows", "end_offset", "plain_csv", "row_count")

    def __init__(
        self, end_offset: int, *, rows: list[list[str] | BadRecord] | None = None, plain: tuple[bytes, int] | None = None
    ) -> None:
        """A chunk ending at ``end_offset``, of ``rows``, or of ``plain`` CSV: (its bytes, its record count)."""
        self.end_offset = end_offset
        #: The chunk's bytes, when every record in them has the expected number of fields (see
        #: :func:`read_chunks`) and they are written so that PostgreSQL's ``COPY ... (FORMAT csv)``
        #: reads the same records from them: UTF-8, no blank line, one kind of line end, a quote only
        #: ever opening a whole quoted field, no line starting ``\.`` (COPY's end-of-data mark). Unquoted empty
        #: fields come out as NULL in COPY unless it is told ``FORCE_NOT_NULL``.
        self.plain_csv, count = plain if plain is not None else (None, len(rows or ()))
        #: How many records (rows) the chunk holds.
        self.row_count = count
        self._rows = rows

    @property
    def rows(self) -> list[list[str] | BadRecord]:
        """Each record's fields, or why it could not be read (parsed on first use for plain CSV)."""
        if self._rows is None:
            self._rows = [fields for fields in _csv_reader(self.plain_csv.decode("utf-8")) if fields]
        return self._rows


class _LineTooLong(Exception):
    """A physical line over MAX_LINE_BYTES (already skipped up to its newline)."""


class _Lines:
    """The decoded physical lines of a binary stream, for ``csv.reader``, tracking the byte offset
    and whether a line of the current record could not be taken."""

    def __init__(self, stream: BinaryIO, offset: int) -> None:
        self._stream = stream
        if offset == 0 and stream.read(len(_BOM)) == _BOM:
            offset = len(_BOM)  # skipped first: it does not count towards the first line's length
        else:
            stream.seek(offset)
        self.offset = offset
        #: Why a line of the record being read is bad (reset by the caller before each record).
        self.problem: str | None = None

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            raise StopIteration
        self.offset += len(line)
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            self._skip_rest_of_line()
            raise _LineTooLong()
        if b"\x00" in line:
            self.problem = "it contains a NUL byte"
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problem = f"it is not valid UTF-8 (byte 0x{line[exc.start]:02x})"
            return line.decode("utf-8", "replace")

    def _skip_rest_of_line(self) -> None:
        while chunk := self._stream.readline(MAX_LINE_BYTES):
            self.offset += len(chunk)
            if chunk.endswith(b"\n"):
                return


def read_records(stream: BinaryIO, *, offset: int = 0) -> Iterator[Record | BadRecord]:
    """The CSV records of ``stream`` from byte ``offset`` (where the stream must be positioned, at
    the start of a record), blank lines skipped. A UTF-8 BOM at offset 0 is dropped."""
    lines = _Lines(stream, offset)
    reader = csv.reader(lines, strict=True)
    while True:
        lines.problem = None
        try:
            fields = next(reader)
        except StopIteration:
            return
        except _LineTooLong:
            yield BadRecord(f"a line is longer than {MAX_LINE_BYTES} bytes", lines.offset)
            continue
        except csv.Error as exc:
            # csv.reader starts afresh on the next call, so the records after this one still parse.
            yield BadRecord(f"it is not valid CSV ({exc})", lines.offset)
            continue
        if lines.problem is not None:
            yield BadRecord(lines.problem, lines.offset)
        elif fields:
            yield Record(fields, lines.offset)


def read_chunks(stream: BinaryIO, *, offset: int = 0, max_lines: int, width: int | None = None) -> Iterator[Chunk]:
    """The records of ``stream`` from byte ``offset`` (where the stream must be positioned, at the
    start of a record), in chunks of at most ``max_lines`` physical lines and about
    :data:`CHUNK_BYTES`; the same records as :func:`read_records` gives. A chunk whose records all
    have ``width`` fields may come as plain CSV (:attr:`Chunk.plain_csv`)."""
    buffer = b""
    at_eof = False
    while True:
        while not at_eof and len(buffer) <= CHUNK_BYTES:
            data = stream.read(CHUNK_BYTES)
            at_eof = not data
            buffer += data
        if offset == 0 and buffer.startswith(_BOM):
            buffer, offset = buffer[len(_BOM):], len(_BOM)
        if not buffer:
            return
        piece = buffer[:_piece_end(buffer, max_lines, at_eof)]
        chunk = _parse_whole(piece, offset, width) if piece else None
        if chunk is None:
            # The first record needs reading line by line; the rest of the piece with it.
            stream.seek(offset)
            chunk = _read_line_by_line(stream, offset, until=offset + max(len(piece), 1), max_records=max_lines)
            stream.seek(chunk.end_offset)
            buffer, at_eof = b"", False
        else:
            buffer = buffer[chunk.end_offset - offset:]
        offset = chunk.end_offset
        yield chunk


def _piece_end(buffer: bytes, max_lines: int, at_eof: bool) -> int:
    """Where the next piece ends: after ``max_lines`` lines, or the last whole line in
    :data:`CHUNK_BYTES`, or the end of a short last piece; 0 if no line ends in CHUNK_BYTES."""
    window = buffer[:CHUNK_BYTES]
    if window.count(b"\n") >= max_lines:
        return _line_end(window, max_lines)
    if at_eof and len(buffer) <= CHUNK_BYTES:
        return len(buffer)
    return window.rfind(b"\n") + 1


def _parse_whole(piece: bytes, offset: int, width: int | None) -> Chunk | None:
    """The records of ``piece`` read at once, up to the first one that needs reading line by line
    (None if that is the first)."""
    usable = len(piece)
    nul = piece.find(b"\x00")
    if nul >= 0:
        usable = piece.rfind(b"\n", 0, nul) + 1
    try:
        text = piece[:usable].decode("utf-8")
    except UnicodeDecodeError as exc:
        usable = piece.rfind(b"\n", 0, exc.start) + 1
        text = piece[:usable].decode("utf-8")
    # First only count the fields of each record (in C, keeping no row: a chunk's rows kept alive
    # would cost garbage-collector passes); the rows are made only if the chunk is not plain CSV.
    try:
        widths = _count_fields(text)
    except csv.Error:
        # Bad quoting, an over-long field, or a quoted field running past the piece: the chunk
        # ends before that record, and the next one starts with it.
        usable = _line_end(piece, _lines_before_error(text))
        text = piece[:usable].decode("utf-8")
        widths = _count_fields(text)
    if not usable:
        return None
    data = piece[:usable]
    if width is not None and widths.keys() == {width} and _is_plain_csv(data):  # {width}: no blank line
        return Chunk(offset + usable, plain=(data, widths[width]))
    return Chunk(offset + usable, rows=[fields for fields in _csv_reader(text) if fields])


def _count_fields(text: str) -> collections.Counter[int]:
    """How many records of ``text`` have how many fields (0: a blank line)."""
    counts: collections.Counter[int] = collections.Counter()
    widths = map(len, _csv_reader(text))
    while part := list(itertools.islice(widths, _PART_RECORDS)):
        counts.update(part)
        # Hand the GIL to a thread waiting for it (the job writing the chunk before, when reading
        # ahead) now rather than after the interpreter's 5 ms switch interval.
        time.sleep(0)
    return counts


def _csv_reader(text: str) -> Iterator[list[str]]:
    # newline="\n": lines end at "\n" only, as read_records splits them (a lone "\r" is csv's to judge).
    return csv.reader(io.StringIO(text, newline="\n"), strict=True)


def _lines_before_error(text: str) -> int:
    """How many lines of ``text`` hold the records before the first that csv refuses."""
    reader = _csv_reader(text)
    lines = 0
    try:
        for _ in reader:
            lines = reader.line_num
    except csv.Error:
        pass
    return lines


def _line_end(data: bytes, lines: int) -> int:
    """The offset just after the first ``lines`` lines of ``data``."""
    return len(data) - len(data.split(b"\n", lines)[-1]) if lines else 0


def _is_plain_csv(data: bytes) -> bool:
    """Whether PostgreSQL's CSV COPY reads ``data`` (which ``csv.reader`` read without error) into
    the same records: see :attr:`Chunk.plain_csv`."""
    if data.startswith(b"\\.") or b"\n\\." in data:  # COPY's end-of-data mark begins a line
        return False
    carriage_returns = data.count(b"\r")
    if carriage_returns and not carriage_returns == data.count(b"\r\n") == data.count(b"\n"):
        return False
    for match in _QUOTED_FIELD.finditer(data):
        start = match.start()
        if match.end() - start == 1 or (start and data[start - 1] not in b",\n"):
            return False  # a quote within a field: csv takes it as text, COPY as a quote
    return True


def _read_line_by_line(stream: BinaryIO, offset: int, *, until: int, max_records: int) -> Chunk:
    """A chunk read with :func:`read_records`, from ``offset`` until at least byte ``until`` or
    ``max_records`` records."""
    rows: list[list[str] | BadRecord] = []
    end = offset
    for record in read_records(stream, offset=offset):
        rows.append(record if isinstance(record, BadRecord) else record.fields)
        end = record.end_offset
        if end >= until or len(rows) >= max_records:
            break
    else:
        end = stream.tell()  # the end of the stream (past any blank lines after the last record)
    return Chunk(end, rows=rows)
