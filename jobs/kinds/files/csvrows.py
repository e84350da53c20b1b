"""Read CSV records from a byte stream, knowing the exact byte offset at the end of each record.

A job that stops mid-file resumes by seeking to the offset of the last record it committed, so
offsets must be exact, and a text-mode file cannot give them (``tell()`` on a text stream is an
opaque cookie). So the stream is read in binary, one physical line at a time, each line decoded on
its own, and the lines are fed to :func:`csv.reader`. The reader pulls lines lazily, only as many as
the record needs (a quoted field may hold newlines, so a record can span several lines), and never
reads ahead: once it hands a record back, the bytes consumed so far end exactly at that record.

A line that is not UTF-8, holds a NUL, or is longer than :data:`MAX_LINE_BYTES`, and a record longer
than :data:`MAX_RECORD_BYTES`, make that record a :class:`BadRecord`, and reading goes on with the
next line. Memory stays bounded: a line is read at most :data:`MAX_LINE_BYTES` at a time, a record
holds at most :data:`MAX_RECORD_BYTES`, and ``csv`` refuses a field over its field size limit.

Reading line by line costs about 1.4 us a record (a Python call per line); ``csv.reader`` over a
whole decoded piece, with the fields only counted, 0.5 us. So :func:`read_chunks` parses up to
:data:`MAX_LINE_BYTES` at once and knows the byte offset only at the end of each chunk, which is
all a checkpoint needs; a piece with
anything :func:`read_records` would refuse (bad UTF-8, a NUL, bad quoting, a quoted field running
past the piece) is cut before the first such record, and that record is read line by line as above,
so both readers give the same records for the same bytes. A chunk's bytes also come back, for
``COPY ... (FORMAT csv)`` to take as they are, when PostgreSQL is sure to read the same records.
"""

from __future__ import annotations

import _csv
import collections
import csv
import dataclasses
import functools
import io
import itertools
import re
import time
from collections.abc import Iterator
from typing import BinaryIO

#: The longest physical line taken; a longer one is skipped (to its newline) as a bad record. Also
#: the most bytes :func:`read_chunks` parses at once, so no line it parses is one that is too long.
MAX_LINE_BYTES = 1024 * 1024
#: The longest record taken (all its lines); no shorter than a line. At the line that makes a record
#: longer, the record is cut off as a bad one and reading starts afresh on the next line.
MAX_RECORD_BYTES = MAX_LINE_BYTES
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
        self,
        end_offset: int,
        *,
        rows: list[list[str] | BadRecord] | None = None,
        plain: tuple[bytes, int] | None = None,
    ) -> None:
        """A chunk ending at ``end_offset``, of ``rows``, or of ``plain`` CSV: (its bytes, its record count)."""
        self.end_offset = end_offset
        #: The chunk's bytes, when every record in them has the expected number of fields (see
        #: :func:`read_chunks`) and they are written so that PostgreSQL's ``COPY ... (FORMAT csv)``
        #: reads the same records from them: UTF-8, no blank line, one kind of line end, a quote
        #: only ever opening a whole quoted field, no line starting ``\.`` (COPY's end-of-data
        #: mark). Unquoted empty fields come out as NULL in COPY unless it is told ``FORCE_NOT_NULL``.
        self.plain_csv: bytes | None = None if plain is None else plain[0]
        #: How many records (rows) the chunk holds.
        self.row_count = len(rows or ()) if plain is None else plain[1]
        self._rows = rows

    @property
    def rows(self) -> list[list[str] | BadRecord]:
        """Each record's fields, or why it could not be read (parsed on first use for plain CSV)."""
        if self._rows is None:
            assert self.plain_csv is not None  # a chunk is made of rows or of plain CSV
            self._rows = [fields for fields in _csv_reader(self.plain_csv.decode("utf-8")) if fields]
        return self._rows


class _TooLong(Exception):
    """A line over MAX_LINE_BYTES (skipped up to its newline), or a record over MAX_RECORD_BYTES."""


class _Lines:
    """The decoded physical lines of a binary stream, for ``csv.reader``, tracking the byte offset
    and the current record: its size, and whether one of its lines could not be taken."""

    def __init__(self, stream: BinaryIO, offset: int) -> None:
        self._stream = stream
        if offset == 0 and stream.read(len(_BOM)) == _BOM:
            offset = len(_BOM)  # skipped first: it does not count towards the first line's length
        else:
            stream.seek(offset)
        self.offset = offset
        self.start_record()

    def start_record(self) -> None:
        """Called before each record is read."""
        #: Why a line of the record being read is bad.
        self.problem: str | None = None
        self._record_bytes = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            raise StopIteration
        self.offset += len(line)
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            self._skip_rest_of_line()
            raise _TooLong(f"a line is longer than {MAX_LINE_BYTES} bytes")
        self._record_bytes += len(line)
        if self._record_bytes > MAX_RECORD_BYTES:
            raise _TooLong(f"a record is longer than {MAX_RECORD_BYTES} bytes")
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
    """The CSV records of ``stream`` from byte ``offset`` (the start of a record), blank lines
    skipped. A UTF-8 BOM at offset 0 is dropped."""
    lines = _Lines(stream, offset)
    reader = csv.reader(lines, strict=True)
    while True:
        lines.start_record()
        try:
            fields = next(reader)
        except StopIteration:
            return
        except _TooLong as exc:
            yield BadRecord(str(exc), lines.offset)
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
    """The records of ``stream`` from byte ``offset`` (the start of a record), in chunks of at most
    ``max_lines`` physical lines and about :data:`MAX_LINE_BYTES`: the same records as
    :func:`read_records` gives. A chunk whose records all have ``width`` fields may come as plain
    CSV (:attr:`Chunk.plain_csv`); with ``width`` None, none does."""
    stream.seek(offset)
    buffer, base = b"", offset  # bytes read ahead, and the offset of their first
    at_eof = False
    while True:
        while not at_eof and len(buffer) - (offset - base) <= MAX_LINE_BYTES:
            data = stream.read(MAX_LINE_BYTES)
            at_eof = not data
            buffer, base = buffer[offset - base :] + data, offset
        if offset == 0 and buffer.startswith(_BOM):
            offset = len(_BOM)
        start = offset - base
        if start >= len(buffer):
            return
        end = _piece_end(buffer, start, max_lines, at_eof)
        chunk = _parse_whole(buffer[start:end], offset, width) if end > start else None
        if chunk is None:
            # The first record needs reading line by line; the rest of the piece with it.
            chunk = _read_line_by_line(stream, offset, until=base + max(end, start + 1), max_records=max_lines)
            if chunk.end_offset > base + len(buffer):
                buffer, base = b"", chunk.end_offset  # read past what was read ahead
            stream.seek(base + len(buffer))
        offset = chunk.end_offset
        yield chunk


@functools.cache
def _lines_pattern(lines: int) -> re.Pattern[bytes]:
    return re.compile(rb"(?:[^\n]*\n){%d}" % lines)


def _piece_end(buffer: bytes, start: int, max_lines: int, at_eof: bool) -> int:
    """Where the piece from ``start`` ends: after ``max_lines`` lines, or after the last whole line
    in :data:`MAX_LINE_BYTES`, or at the end of a short last piece; ``start`` if no line ends in
    MAX_LINE_BYTES. Scans no further than the piece (the regex stops after ``max_lines`` lines)."""
    window_end = min(len(buffer), start + MAX_LINE_BYTES)
    if match := _lines_pattern(max_lines).match(buffer, start, window_end):
        return match.end()
    if at_eof and len(buffer) - start <= MAX_LINE_BYTES:
        return len(buffer)
    return buffer.rfind(b"\n", start, window_end) + 1 or start


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
    if width is not None:
        # First only count the fields of each record (in C, keeping no row: rows kept alive cost
        # garbage-collector passes); if the piece is plain CSV, no row is ever made.
        try:
            widths = _count_fields(text)
        except csv.Error:
            pass
        else:
            if widths.keys() == {width} and _is_plain_csv(piece[:usable]):  # {width}: no blank line
                return Chunk(offset + usable, plain=(piece[:usable], widths[width]))
    rows, lines = _rows_before_error(text)
    if lines is not None:  # cut before the record csv refused; the next chunk starts with it
        usable = _line_end(piece, lines)
    return Chunk(offset + usable, rows=rows) if usable else None


def _count_fields(text: str) -> collections.Counter[int]:
    """How many records of ``text`` have how many fields (0: a blank line).

    Raises:
        csv.Error: a record is not valid CSV.
    """
    counts: collections.Counter[int] = collections.Counter()
    widths = map(len, _csv_reader(text))
    while True:
        part = list(itertools.islice(widths, _PART_RECORDS))
        counts.update(part)
        if len(part) < _PART_RECORDS:
            return counts
        # Hand the GIL to a thread waiting for it (the job writing the chunk before, when reading
        # ahead) now rather than after the interpreter's 5 ms switch interval.
        time.sleep(0)


def _rows_before_error(text: str) -> tuple[list[list[str] | BadRecord], int | None]:
    """The records of ``text`` up to the first that csv refuses (bad quoting, an over-long field, a
    quoted field running past the piece), blank lines skipped; and how many lines they take if one
    was refused (None: all of ``text`` was read)."""
    reader = _csv_reader(text)
    rows: list[list[str] | BadRecord] = []
    lines = 0
    try:
        for fields in reader:
            if fields:
                rows.append(fields)
            lines = reader.line_num
    except csv.Error:
        return rows, lines
    return rows, None


def _csv_reader(text: str) -> _csv.Reader:
    # newline="\n": lines end at "\n" only, as read_records splits them (a lone "\r" is csv's to judge).
    return csv.reader(io.StringIO(text, newline="\n"), strict=True)


def _line_end(data: bytes, lines: int) -> int:
    """The offset just after the first ``lines`` lines of ``data``."""
    if not lines:
        return 0
    match = _lines_pattern(lines).match(data)
    assert match is not None  # csv read ``lines`` whole lines of ``data``, each ending in "\n"
    return match.end()


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
