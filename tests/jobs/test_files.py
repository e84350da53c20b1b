"""The ``file.process`` job through a real worker: rows into records, row errors, failures, resume."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import select

from jobs import db, registry
from jobs.kinds.events import models as event_models
from jobs.kinds.files import csvrows
from jobs.kinds.files import handlers as files_handler
from jobs.kinds.files import models as file_models
from jobs.kinds.files import uploads as files
from jobs.kinds.files.models import FileStatus
from jobs.models import AttemptOutcome, JobStatus


@pytest.fixture
def make_file(database: db.Database, settings) -> Callable[..., tuple[uuid.UUID, uuid.UUID]]:
    """Store ``content`` as an upload would and commit its file row and job; (file_id, job_id).
    ``before_commit(file)`` runs in that transaction, before the job is sent to the running worker."""

    def make(
        content: bytes,
        *,
        block_rows: int | None = None,
        before_commit: Callable[[file_models.File], None] | None = None,
    ) -> tuple[uuid.UUID, uuid.UUID]:
        with files.UploadSink(settings.storage_dir, max_bytes=settings.max_upload_bytes) as sink:
            sink.write(content)
        with db.session_scope(database.sessions) as session:
            file, job = files.register_upload(
                session, sink, name="data.csv", content_type="text/csv", block_rows=block_rows
            )
            if before_commit is not None:
                before_commit(file)
        return file.id, job.id

    return make


@pytest.fixture
def read_file(database: db.Database) -> Callable[[uuid.UUID], file_models.File]:
    def read(file_id: uuid.UUID) -> file_models.File:
        with database.sessions() as session:
            return files.get_file(session, file_id)

    return read


@pytest.fixture
def read_records(database: db.Database) -> Callable[[uuid.UUID], list[tuple[int, dict]]]:
    """A file's records as (row_number, data), in row order."""

    def read(file_id: uuid.UUID) -> list[tuple[int, dict]]:
        query = (
            select(file_models.Record.row_number, file_models.Record.data)
            .where(file_models.Record.file_id == file_id)
            .order_by(file_models.Record.row_number)
        )
        with database.sessions() as session:
            return [tuple(row) for row in session.execute(query)]

    return read


def test_csv_rows_become_records_keyed_by_the_header(make_file, drain, read_file, read_records, fetch):
    file_id, job_id = make_file(b"name,qty\nwidget,3\ngadget,5\n")
    drain()
    file = read_file(file_id)
    assert (file.status, file.rows_total, file.rows_imported, file.rows_rejected) == (FileStatus.PROCESSED, 2, 2, 0)
    assert file.row_errors == [] and file.error_message is None and file.finished_at is not None
    assert read_records(file_id) == [(1, {"name": "widget", "qty": "3"}), (2, {"name": "gadget", "qty": "5"})]
    assert fetch(job_id)[0].status == JobStatus.SUCCEEDED


def test_bad_rows_are_counted_and_kept_with_their_row_numbers_and_the_rest_imported(
    make_file, drain, read_file, read_records
):
    content = (
        b"a,b,c\n"
        b"1,2,3\n"
        b"1,2\n"  # row 2: too few fields
        b"\n"  # blank: skipped, not a row
        b"1,2,3,4\n"  # row 3: too many
        b"x,\xff,z\n"  # row 4: not UTF-8
        b"7,8,9\n"  # row 5
        b'"1,"2"\n'  # row 6: bad quoting
        b"4,5,6\n"  # row 7
    )
    file_id, _ = make_file(content)
    drain()
    file = read_file(file_id)
    assert (file.status, file.rows_total, file.rows_imported, file.rows_rejected) == (FileStatus.PROCESSED, 7, 3, 4)
    assert [(e["row"], e["reason"]) for e in file.row_errors] == [
        (2, "expected 3 fields, got 2"),
        (3, "expected 3 fields, got 4"),
        (4, "it is not valid UTF-8 (byte 0xff)"),
        (6, "it is not valid CSV (',' expected after '\"')"),
    ]
    assert [n for n, _ in read_records(file_id)] == [1, 5, 7]


def test_only_the_first_hundred_row_errors_are_kept_but_all_are_counted(make_file, drain, read_file):
    file_id, _ = make_file(b"a,b\n" + b"only-one\n" * 150 + b"1,2\n", block_rows=40)
    drain()
    file = read_file(file_id)
    assert (file.rows_total, file.rows_imported, file.rows_rejected) == (151, 1, 150)
    assert [e["row"] for e in file.row_errors] == list(range(1, 101))


def test_non_utf8_file_fails_at_once_saying_why(make_file, drain, read_file, fetch):
    file_id, job_id = make_file("café,prix\nthé,3\n".encode("latin-1"))
    drain()
    file = read_file(file_id)
    job, history = fetch(job_id)
    assert file.status == FileStatus.FAILED
    assert file.error_message == "the header row cannot be read: it is not valid UTF-8 (byte 0xe9)"
    assert (job.status, job.error_type, len(history)) == (JobStatus.FAILED, "jobs.errors.PermanentError", 1)
    assert job.error_message == file.error_message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\n\r\n\n", "the file has no header row (it is empty or blank)"),
        (b"a,b,a\n1,2,3\n", "the header row names a column twice: 'a'"),
    ],
)
def test_a_file_without_a_usable_header_fails(make_file, drain, read_file, content, message):
    file_id, _ = make_file(content)
    drain()
    file = read_file(file_id)
    assert (file.status, file.error_message) == (FileStatus.FAILED, message)


def test_header_only_file_is_processed_with_no_rows(make_file, drain, read_file, read_records):
    file_id, _ = make_file(b"\xef\xbb\xbfa,b\r\n")
    drain()
    file = read_file(file_id)
    assert (file.status, file.rows_total, file.rows_imported, file.rows_rejected) == (FileStatus.PROCESSED, 0, 0, 0)
    assert read_records(file_id) == []


def test_quoted_fields_keep_their_commas_newlines_and_quotes(make_file, drain, read_file, read_records):
    content = (
        b"\xef\xbb\xbfid,note\r\n"
        b'1,"one, two"\r\n'
        b'2,"line one\nline two\r\nline three"\r\n'
        b'3,"she said ""hi"""\r\n'
        b"4,\xe2\x82\xac \xf0\x9f\x98\x80\r\n"
        b'5,"back\\slash\ttab \\N \\."\r\n'
    )
    file_id, _ = make_file(content)
    drain()
    assert read_file(file_id).rows_imported == 5
    assert read_records(file_id) == [
        (1, {"id": "1", "note": "one, two"}),
        (2, {"id": "2", "note": "line one\nline two\r\nline three"}),
        (3, {"id": "3", "note": 'she said "hi"'}),
        (4, {"id": "4", "note": "€ 😀"}),
        (5, {"id": "5", "note": "back\\slash\ttab \\N \\."}),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b'1,"one, two",\n2,"she said ""hi""",x\n3,"line one\nline two",\n',
        b'1,caf\xc3\xa9 \xe2\x82\xac,\\N\r\n2,back\\slash\ttab, \r\n3,"",\\.x\r\n',
    ],
)
def test_quotes_backslashes_tabs_and_copy_marks_become_the_same_records_as_csv_reads(
    make_file, drain, read_file, read_records, body
):
    # On PostgreSQL these go through COPY's text format, where a backslash, a tab and "\." mean
    # something: the records must hold exactly what csv.reader read.
    header = b"id,text,extra\n"
    file_id, _ = make_file(header + body)
    drain()
    rows = csv.reader(io.StringIO(body.decode(), newline=""))
    expected = [(n, dict(zip(["id", "text", "extra"], row, strict=True))) for n, row in enumerate(rows, 1)]
    assert read_records(file_id) == expected
    assert read_file(file_id).rows_imported == 3


def test_a_file_of_several_mebibytes_is_imported_row_for_row(
    make_file, drain, read_file, read_records, database, monkeypatch
):
    """Pieces of 1 MiB at the real sizes: quoted newlines cross piece ends, bad rows fall between.
    On PostgreSQL every block goes to COPY; on SQLite none."""
    copies = []
    original = files_handler._RecordsCopy.write
    monkeypatch.setattr(
        files_handler._RecordsCopy,
        "write",
        staticmethod(lambda session, data: copies.append(data) or original(session, data)),
    )
    lines, expected = [b"n,name,note\n"], []
    for n in range(1, 40_001):
        if n % 997 == 0 and n < 20_000:  # bad rows in the first half only
            lines.append(b"a row, with too many, fields, here\n")
            continue
        note = f"spans\nlines {n}" if n % 301 == 0 else f"note {n}"
        name = f"name {n:06d} " + "x" * 60
        lines.append(f'{n},{name},"{note}"\n'.encode())
        expected.append((n, {"n": str(n), "name": name, "note": note}))
    content = b"".join(lines)
    assert len(content) > 3 * 2**20
    file_id, _ = make_file(content)
    drain()
    file = read_file(file_id)
    assert (file.status, file.rows_total, file.rows_rejected) == (FileStatus.PROCESSED, 40_000, 20)
    assert read_records(file_id) == expected
    assert file.byte_offset == len(content)
    if database.engine.dialect.name == "postgresql":
        assert len(copies) >= 4  # one per block of at most 1 MiB
    else:
        assert copies == []


@pytest.mark.parametrize(
    "lines",
    [["a", "b\\c", ""], ["a", 'x"y', ""], ["a", "b\tc"], ['"a"', "b", ""]],
)
def test_a_plain_chunk_with_a_line_it_cannot_write_as_it_is_goes_row_by_row(lines):
    # One column: the pattern matches an empty field, so it must not match once more at the end.
    data = "\n".join(lines).encode()
    copy = files_handler._RecordsCopy(uuid.uuid4(), ["h"])
    rows = [row for chunk in csvrows.read_chunks(io.BytesIO(data), max_lines=100) for row in chunk.rows]
    plain = copy.plain_text(data, 1)
    assert plain is None or plain == copy.text(list(enumerate(rows, 1)))  # type: ignore[arg-type]


@pytest.mark.parametrize("width", [200, 400])
def test_wide_files_are_imported_whole(make_file, drain, read_file, read_records, width):
    # 400 columns of 40 bytes make a row too big for a PostgreSQL table of text columns (the stage);
    # such files take the JSON path.
    header = [f"column_{n}" for n in range(width)]
    rows = [[f"{r:04d}-{n:035d}" for n in range(width)] for r in range(3)]
    content = "\n".join(",".join(fields) for fields in [header, *rows]).encode() + b"\n"
    file_id, _ = make_file(content)
    drain()
    assert read_file(file_id).rows_imported == 3
    assert read_records(file_id) == [(n, dict(zip(header, fields, strict=True))) for n, fields in enumerate(rows, 1)]


@pytest.mark.postgres_only
def test_postgresql_copy_of_records_gives_the_records_csv_reader_read(database):
    """Random small CSVs of quotes, line ends, backslashes, tabs, control characters, per cent signs
    and such, under headers of such names: the good rows of every chunk, written as COPY text by
    ``_RecordsCopy``, become exactly the records csv.reader read; where a plain chunk is turned into
    COPY text as it is (``plain_text``), the text is the same."""
    import random

    pieces = [
        b"a",
        b'"q,x"',
        b'"multi\nline"',
        b'"m\r\nl"',
        b'""',
        b'"""x"""',
        b"\\.",
        b"\\N",
        b"\\",
        b"\\t",
        b" ",
        b"\t",
        b"\x01",
        b"\x1f\x7f",
        b"\xc3\xa9",
        b"\xf0\x9f\x98\x80",
        b"\xe2\x80\xa8",
        b'x"y',
        b"%s",
        b"%%d",
        b"{}",
        b"\r",
        b'"r\rr"',
        b"",
    ]
    names = ["h", "%s", "100%", 'quo"te', "back\\slash", "tab\there", "caf\u00e9", "{}"]
    rng = random.Random(3)
    rows_written, taken = 0, {"plain": 0}
    with database.sessions() as session:
        for _ in range(1500):
            width, line_end = rng.choice([1, 2, 3]), rng.choice([b"\n", b"\r\n"])
            lines = [
                b",".join(b"".join(rng.choice(pieces) for _ in range(rng.randrange(3))) for _ in range(width))
                for _ in range(rng.randrange(1, 6))
            ]
            data = line_end.join(lines) + (line_end if rng.random() < 0.8 else b"")
            header = [f"{rng.choice(names)}{n}" for n in range(width)]
            file_id = uuid.uuid4()
            copy = files_handler._RecordsCopy(file_id, header)
            expected = []
            for chunk in csvrows.read_chunks(io.BytesIO(data), max_lines=100, width=width):
                good = [row for row in chunk.rows if isinstance(row, list) and len(row) == width]
                numbered = list(enumerate(good, len(expected) + 1))
                copy_text = copy.text(numbered)
                if chunk.plain_csv is not None and (plain := copy.plain_text(chunk.plain_csv, len(expected) + 1)):
                    assert plain == copy_text, data  # the two ways give the same COPY text
                    taken["plain"] += 1
                copy.write(session, copy_text)
                expected += [dict(zip(header, row, strict=True)) for row in good]
            query = (
                select(file_models.Record.data)
                .where(file_models.Record.file_id == file_id)
                .order_by(file_models.Record.row_number)
            )
            assert session.scalars(query).all() == expected, data
            rows_written += len(expected)
        session.rollback()
    assert rows_written > 1000 and taken["plain"] > 50  # the generator makes good rows, and plain chunks


def test_missing_stored_file_fails_the_job_and_the_file(make_file, drain, read_file, settings, fetch):
    # Gone before the commit sends the job: the worker, already running, cannot read it first.
    file_id, job_id = make_file(
        b"a\n1\n", before_commit=lambda file: files.stored_path(settings.storage_dir, file.storage_key).unlink()
    )
    drain()
    file = read_file(file_id)
    assert file.status == FileStatus.FAILED
    assert "the stored file is missing" in file.error_message
    assert fetch(job_id)[0].attempts == 1


class SimulatedCrash(Exception):
    """Stands for a worker dying with a block written but not committed."""


def _csv_with_tricky_rows(count: int) -> tuple[bytes, list[tuple[int, dict]]]:
    """A CSV whose rows include multi-line quoted fields and bad rows; and its expected records."""
    lines, expected = [b"n,text\n"], []
    for n in range(1, count + 1):
        if n % 7 == 0:
            lines.append(b"bad row without enough fields\n")
            continue
        text = f"row {n}\nspans, lines" if n % 3 == 0 else f"row {n}"
        lines.append(f'{n},"{text}"\n'.encode())
        expected.append((n, {"n": str(n), "text": text}))
    return b"".join(lines), expected


def test_a_file_interrupted_after_some_blocks_resumes_from_its_checkpoint_without_gaps_or_repeats(
    make_file, drain, read_file, read_records, fetch, monkeypatch
):
    content, expected = _csv_with_tricky_rows(50)
    checkpoints = []
    original = registry.RunningJob.checkpoint

    def crash_on_the_third_checkpoint(job: registry.RunningJob) -> None:
        checkpoints.append(job.attempt)
        if len(checkpoints) == 3:
            raise SimulatedCrash("died with block 3 written but not committed")
        original(job)

    monkeypatch.setattr(registry.RunningJob, "checkpoint", crash_on_the_third_checkpoint)
    file_id, job_id = make_file(content, block_rows=4)
    drain()

    job, history = fetch(job_id)
    assert [a.outcome for a in history] == [AttemptOutcome.ERROR, AttemptOutcome.SUCCEEDED]
    # The second attempt started after the two committed blocks: it checkpointed every block but those.
    header_end = content.index(b"\n") + 1
    blocks = list(csvrows.read_chunks(io.BytesIO(content[header_end:]), max_lines=4))
    assert checkpoints == [1, 1, 1] + [2] * (len(blocks) - 2)
    assert read_records(file_id) == expected
    file = read_file(file_id)
    assert (file.status, file.rows_total, file.rows_imported, file.rows_rejected) == (FileStatus.PROCESSED, 50, 43, 7)
    assert [e["row"] for e in file.row_errors] == [7, 14, 21, 28, 35, 42, 49]
    assert file.byte_offset == len(content)


def test_a_file_failed_midway_keeps_its_committed_blocks_and_a_replay_finishes_it(
    make_file, drain, read_file, read_records, client, monkeypatch
):
    content, expected = _csv_with_tricky_rows(30)
    original = registry.RunningJob.checkpoint
    calls = []

    def crash_every_second_checkpoint_of_the_first_run(job: registry.RunningJob) -> None:
        calls.append(job.run)
        if job.run == 0 and len(calls) % 2 == 0:
            raise SimulatedCrash("crash")
        original(job)

    monkeypatch.setattr(registry.RunningJob, "checkpoint", crash_every_second_checkpoint_of_the_first_run)
    file_id, job_id = make_file(content, block_rows=5)
    drain()
    failed = read_file(file_id)
    assert failed.status == FileStatus.FAILED and failed.error_message == "crash"
    assert 0 < failed.rows_total < 30
    assert read_records(file_id) == [r for r in expected if r[0] <= failed.rows_total]

    assert client.post(f"/jobs/{job_id}/replay").status_code == 202
    drain()
    file = read_file(file_id)
    assert (file.status, file.rows_total, file.error_message) == (FileStatus.PROCESSED, 30, None)
    assert read_records(file_id) == expected


def test_processed_file_emits_one_file_processed_event_with_its_counts(client, drain, database):
    from sqlalchemy import select

    body = b"name,email\nAda,ada@example.com\nbad\nBob,bob@example.com\n"
    file_id = client.post("/files", files={"file": ("people.csv", body, "text/csv")}).json()["file_id"]
    drain()
    with database.readers() as session:
        events = session.scalars(select(event_models.Event).where(event_models.Event.type == "file.processed")).all()
        assert [e.payload for e in events] == [{"file_id": file_id, "records": 2, "errors": 1}]
        notes = session.scalars(select(event_models.Notification)).all()
    assert len(notes) == 1


def test_reading_ahead_gives_every_item_in_order_passes_errors_on_and_stops_when_closed():
    read = []

    def source():
        for n in range(5):
            read.append(n)
            if n == 3:
                raise OSError("disk gone")
            yield n

    ahead = files_handler._read_ahead(source())
    assert [next(ahead), next(ahead), next(ahead)] == [0, 1, 2]
    with pytest.raises(OSError, match="disk gone"):
        next(ahead)

    read.clear()
    ahead = files_handler._read_ahead(source())
    assert next(ahead) == 0
    ahead.close()  # waits for the read in flight (item 1), and reads no further
    assert read == [0, 1] and list(ahead) == []
