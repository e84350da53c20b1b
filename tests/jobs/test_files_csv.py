"""Reading CSV records with exact byte offsets, and sanitizing client filenames (no services)."""

from __future__ import annotations

import io

import pytest

from jobs.kinds.files import csvrows
from jobs.kinds.files import uploads as files

TRICKY = (
    b"\xef\xbb\xbfid,text\r\n"
    b"1,plain\r\n"
    b"\n"
    b'2,"commas, and\nnew\r\nlines"\n'
    b"3,caf\xc3\xa9\n"
    b"4,\xff\xfe\n"
    b'5,"q"x\n'
    b"6,nul\x00\n"
    b'7,"""quoted"""\n'
    b"8,no newline at the end"
)


def _read(data: bytes, offset: int = 0) -> list[csvrows.Record | csvrows.BadRecord]:
    stream = io.BytesIO(data)
    stream.seek(offset)
    return list(csvrows.read_records(stream, offset=offset))


def test_records_quoted_newlines_bad_bytes_and_blank_lines_are_read_as_csv_says():
    records = _read(TRICKY)
    shapes = [r.fields if isinstance(r, csvrows.Record) else r.reason for r in records]
    assert shapes == [
        ["id", "text"],
        ["1", "plain"],
        ["2", "commas, and\nnew\r\nlines"],
        ["3", "café"],
        "it is not valid UTF-8 (byte 0xff)",
        "it is not valid CSV (',' expected after '\"')",
        "it contains a NUL byte",
        ["7", '"quoted"'],
        ["8", "no newline at the end"],
    ]
    assert records[-1].end_offset == len(TRICKY)


def test_reading_from_any_record_offset_gives_exactly_the_records_after_it():
    records = _read(TRICKY)
    for index, record in enumerate(records):
        assert _read(TRICKY, record.end_offset) == records[index + 1 :]


def test_a_record_longer_than_the_limit_is_cut_off_as_a_bad_one_and_reading_goes_on(monkeypatch):
    # Many small quoted fields with newlines: each line is short, the record is not; csv would keep
    # every field of it in memory.
    monkeypatch.setattr(csvrows, "MAX_RECORD_BYTES", 64)
    data = b"a,b\n" + b'"x\ny",' * 100 + b'"z"\n' + b"1,2\n"
    records = _read(data)
    assert [type(r).__name__ for r in records[:2]] == ["Record", "BadRecord"]
    assert records[1].reason == "a record is longer than 64 bytes"
    assert records[-1].fields == ["1", "2"] and records[-1].end_offset == len(data)


def test_a_line_longer_than_the_limit_is_one_bad_record_and_reading_goes_on(monkeypatch):
    monkeypatch.setattr(csvrows, "MAX_LINE_BYTES", 16)
    data = b"a,b\n" + b"x" * 50 + b",y\n" + b"1,2\n"
    records = _read(data)
    assert [type(r).__name__ for r in records] == ["Record", "BadRecord", "Record"]
    assert records[1].end_offset == 4 + 53
    assert records[2].fields == ["1", "2"]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("a\x00b\nc.csv", "abc.csv"),
        ("\u202eevil\u200b.csv", "evil.csv"),
        ("bad\udcffbytes.csv", "badbytes.csv"),
        ("..", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("  report 2024.csv ", "report 2024.csv"),
        ("é" * 300, "é" * 255),
    ],
)
def test_client_filenames_are_reduced_to_a_safe_name(given, kept):
    assert files.sanitize_filename(given) == kept


@pytest.mark.parametrize("key", ["../x", "abc", "0" * 31 + "/", "/etc/passwd"])
def test_only_server_made_storage_keys_become_paths(tmp_path, key):
    with pytest.raises(ValueError):
        files.stored_path(tmp_path, key)


# --- read_chunks: the same records as read_records, a piece at a time --------------------------

_PIECES = [
    b"a",
    b"b,c",
    b'"q,x"',
    b'"multi\nline"',
    b"\n",
    b"\r\n",
    b'"',
    b'x"y',
    b"\xff",
    b"\x00",
    b"\xc3\xa9",
    b",",
    b'""',
    b"\\.",
    b" ",
    b"\r",
    b'"""x"""',
]


def _chunked(data: bytes, max_lines: int, offset: int = 0, width: int | None = None) -> list[csvrows.Chunk]:
    stream = io.BytesIO(data)
    stream.seek(offset)
    return list(csvrows.read_chunks(stream, offset=offset, max_lines=max_lines, width=width))


def _shapes(chunks: list[csvrows.Chunk]) -> list:
    """The records of all the chunks: fields, or the reason for a bad one."""
    return [r.reason if isinstance(r, csvrows.BadRecord) else r for chunk in chunks for r in chunk.rows]


def _expected(data: bytes, offset: int = 0) -> list:
    return [r.reason if isinstance(r, csvrows.BadRecord) else r.fields for r in _read(data, offset)]


@pytest.mark.parametrize(("line_bytes", "record_bytes", "field_limit"), [(None, None, None), (5, 5, None), (16, 40, 6)])
def test_chunks_hold_exactly_the_records_read_line_by_line_and_resume_at_any_chunk_end(
    monkeypatch, request, line_bytes, record_bytes, field_limit
):
    import csv
    import random

    if line_bytes is not None:  # small pieces: records cross piece ends, lines and records run over the limits
        monkeypatch.setattr(csvrows, "MAX_LINE_BYTES", line_bytes)
        monkeypatch.setattr(csvrows, "MAX_RECORD_BYTES", record_bytes)
    if field_limit is not None:
        previous = csv.field_size_limit(field_limit)
        request.addfinalizer(lambda: csv.field_size_limit(previous))
    rng = random.Random(line_bytes)
    for _ in range(1500):
        data = (b"\xef\xbb\xbf" if rng.random() < 0.2 else b"") + b"".join(
            rng.choice(_PIECES) for _ in range(rng.randrange(40))
        )
        max_lines = rng.choice([1, 2, 5, 100])
        chunks = _chunked(data, max_lines, width=rng.choice([None, 1, 2]))
        assert _shapes(chunks) == _expected(data), data
        assert all(len(c.rows) == c.row_count <= max_lines for c in chunks)
        for chunk in chunks:
            assert _shapes(_chunked(data, max_lines, chunk.end_offset)) == _expected(data, chunk.end_offset), data
        if chunks:
            assert chunks[-1].end_offset == len(data) or not data.strip(b"\r\n")


def test_a_chunk_is_at_most_max_lines_and_ends_where_its_last_record_does():
    data = b'1,a\n2,b\n3,"c\nc"\n4,d\n5,e\n'
    chunks = _chunked(data, 2, width=2)
    assert [c.rows for c in chunks] == [[["1", "a"], ["2", "b"]], [["3", "c\nc"]], [["4", "d"], ["5", "e"]]]
    assert [c.end_offset for c in chunks] == [8, 16, len(data)]


@pytest.mark.parametrize(
    "data",
    [
        b"1,a\n2,b\n",
        b"1,a\r\n2,b\r\n",
        b'1,"x, ""y"""\n2,"multi\nline"\n',
        b'1,""\n2,\n',
        b"1,back\\slash \\N\n",
        "1,café €\n".encode(),
        b"1,no newline at the end",
    ],
)
def test_chunks_of_plain_csv_come_with_their_bytes(data):
    [chunk] = _chunked(data, 100, width=2)
    assert chunk.plain_csv == data


@pytest.mark.parametrize(
    ("data", "width"),
    [
        (b'1,a"b\n', 2),  # a quote inside an unquoted field: text to csv, a quote to COPY
        (b"a\n\\.\nb\n", 1),  # COPY's end-of-data mark: COPY would stop there and lose b
        (b"a\n\nb\n", 1),  # a blank line: skipped by csv, an empty field to COPY
    ],
)
def test_one_column_chunks_that_copy_could_read_otherwise_come_without_bytes(data, width):
    assert all(c.plain_csv is None for c in _chunked(data, 100, width=width))


@pytest.mark.parametrize(
    "data",
    [
        b'1,a"b\n',  # a quote inside an unquoted field: text to csv, a quote to COPY
        b'1, "b"\n',  # the same, after a space
        b"1,a\n\\.\n",  # COPY's end-of-data mark
        b"\\.,a\n",  # a line starting with it
        b"1,a\n\n2,b\n",  # a blank line: skipped by csv, a short row to COPY
        b"1,a\r\n2,b\n",  # two kinds of line end
        b"1,a\n2,b,c\n",  # a row of another width
    ],
)
def test_chunks_that_copy_could_read_otherwise_come_without_bytes(data):
    chunks = _chunked(data, 100, width=2)
    assert all(c.plain_csv is None for c in chunks)
