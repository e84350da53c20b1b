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
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from typing import BinaryIO

#: The longest physical line taken; a longer one is skipped (to its newline) as a bad record.
MAX_LINE_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


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


class _LineTooLong(Exception):
    """A physical line over MAX_LINE_BYTES (already skipped up to its newline)."""


class _Lines:
    """The decoded physical lines of a binary stream, for ``csv.reader``, tracking the byte offset
    and whether a line of the current record could not be taken."""

    def __init__(self, stream: BinaryIO, offset: int) -> None:
        self._stream = stream
        self.offset = offset
        #: Why a line of the record being read is bad (reset by the caller before each record).
        self.problem: str | None = None

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            raise StopIteration
        if self.offset == 0 and line.startswith(_BOM):
            line = line[len(_BOM):]
            self.offset = len(_BOM)
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
