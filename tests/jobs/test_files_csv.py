"""Reading CSV records with exact byte offsets, and sanitizing client filenames (no services)."""

from __future__ import annotations

import io

import pytest

from jobs import csvrows, files

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
        assert _read(TRICKY, record.end_offset) == records[index + 1:]


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
