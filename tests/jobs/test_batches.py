"""Batches through a real worker (8 threads): planning, exact counts, per-record isolation, completion
exactly once per run, failed chunks, replay, duplicate messages, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select, update

from jobs import db, models, registry, sending, store
from jobs.kinds.batches import errors as batch_errors
from jobs.kinds.batches import models as batch_models
from jobs.kinds.batches import service as batches
from jobs.kinds.batches.models import BatchStatus, ChunkStatus
from jobs.kinds.events import models as event_models
from jobs.kinds.files import models as file_models
from jobs.kinds.files.models import RecordStatus
from jobs.models import JobStatus


class Crash(BaseException):
    """Not an Exception: gets past the per-record catch and fails the whole chunk."""


@batches.operation("test.explode")
def explode(data: dict[str, Any]) -> dict[str, Any]:
    """Upper-case ``name``; raise on a record asking for it (``boom``), crash the chunk on ``crash``."""
    if data.get("crash"):
        raise Crash("the whole chunk goes down")
    if data.get("boom"):
        raise RuntimeError(f"boom on {data['name']}")
    return {**data, "name": data["name"].upper()}


@pytest.fixture
def start_batch(database: db.Database) -> Callable[..., uuid.UUID]:
    """Create and commit a batch (its plan job is sent on commit); returns its ID."""

    def start(operation: str, **options: Any) -> uuid.UUID:
        with db.session_scope(database.sessions) as session:
            batch, _ = batches.create_batch(session, operation, **options)
            return batch.id

    return start


@pytest.fixture
def read_batch(database: db.Database) -> Callable[[uuid.UUID], batch_models.Batch]:
    def read(batch_id: uuid.UUID) -> batch_models.Batch:
        with database.readers() as session:
            return session.get(batch_models.Batch, batch_id)

    return read


@pytest.fixture
def read_records(database: db.Database) -> Callable[[list[int]], list[tuple[str, Any, Any]]]:
    """(status, data, errors) of each record, in the order of ``ids``."""

    def read(ids: list[int]) -> list[tuple[str, Any, Any]]:
        with database.readers() as session:
            query = select(file_models.Record).where(file_models.Record.id.in_(ids))
            rows = {r.id: (r.status, r.data, r.errors) for r in session.execute(query).scalars()}
        return [rows[i] for i in ids]

    return read


@pytest.fixture
def completion_events(database: db.Database) -> Callable[[uuid.UUID], list[event_models.Event]]:
    def read(batch_id: uuid.UUID) -> list[event_models.Event]:
        with database.readers() as session:
            found = session.scalars(
                select(event_models.Event).where(event_models.Event.type == batches.COMPLETED_EVENT)
            )
            return [event for event in found if event.payload["batch_id"] == str(batch_id)]

    return read


def _people(count: int, *, bad_every: int = 0) -> list[dict[str, Any]]:
    """Rows for ``validate``: every ``bad_every``-th one has a bad email."""
    return [
        {
            "name": f" Person {i} ",
            "email": "nope" if bad_every and i % bad_every == 0 else f" P{i}@Example.COM ",
            "quantity": str(i),
        }
        for i in range(1, count + 1)
    ]


def _chunk_jobs(database: db.Database, batch_id: uuid.UUID) -> list[models.Job]:
    with database.readers() as session:
        query = (
            select(models.Job)
            .join(batch_models.BatchChunk, batch_models.BatchChunk.job_id == models.Job.id)
            .where(batch_models.BatchChunk.batch_id == batch_id)
            .order_by(batch_models.BatchChunk.number)
        )
        return list(session.scalars(query))


def test_counts_are_exact_with_chunk_size_7_over_100_records_with_bad_ones(
    make_records, start_batch, drain, read_batch, read_records, completion_events
):
    file_id, ids = make_records(_people(100, bad_every=9))
    batch_id = start_batch("validate", file_id=file_id, chunk_size=7)
    drain()
    batch = read_batch(batch_id)
    assert (batch.status, batch.total, batch.processed, batch.failed) == (
        BatchStatus.COMPLETED_WITH_ERRORS,
        100,
        100,
        11,
    )
    assert (batch.chunks_done, batch.chunks_total, batch.completions, batch.completed_run) == (15, 15, 1, 0)
    records = read_records(ids)
    bad = [i for i, (status, _, _) in enumerate(records, start=1) if status == RecordStatus.FAILED]
    assert bad == list(range(9, 101, 9))
    assert records[8][2] == ["email: not an email address: 'nope'"]
    assert all(status == RecordStatus.PROCESSED and errs is None for status, _, errs in records if status != "failed")
    [event] = completion_events(batch_id)
    assert event.payload == {
        "batch_id": str(batch_id),
        "status": "completed_with_errors",
        "total": 100,
        "processed": 100,
        "failed": 11,
    }


def test_normalize_trims_lowercases_emails_and_parses_integers(
    make_records, start_batch, drain, read_batch, read_records
):
    file_id, ids = make_records([{"name": "  Ada ", "email": " Ada@Example.COM", "quantity": " 42 ", "zip": "007"}])
    batch_id = start_batch("normalize", file_id=file_id)
    drain()
    assert read_batch(batch_id).status == BatchStatus.COMPLETED
    assert read_records(ids) == [
        (RecordStatus.PROCESSED, {"name": "Ada", "email": "ada@example.com", "quantity": 42, "zip": "007"}, None)
    ]


def test_one_bad_record_fails_alone_and_the_others_are_written(
    make_records, start_batch, drain, read_batch, read_records
):
    rows = [{"name": f"r{i}"} for i in range(5)]
    rows[2]["boom"] = "yes"
    _, ids = make_records(rows)
    batch_id = start_batch("test.explode", record_ids=ids, chunk_size=10)
    drain()
    batch = read_batch(batch_id)
    assert (batch.status, batch.processed, batch.failed, batch.chunks_total) == (
        BatchStatus.COMPLETED_WITH_ERRORS,
        5,
        1,
        1,
    )
    records = read_records(ids)
    assert [r[0] for r in records] == ["processed", "processed", "failed", "processed", "processed"]
    assert records[2][1] == {"name": "r2", "boom": "yes"}  # left as it was
    assert records[2][2] == ["RuntimeError: boom on r2"]
    assert records[0][1] == {"name": "R0"}


def test_duplicate_chunk_message_does_not_double_count(make_records, start_batch, drain, read_batch, database, fetch):
    file_id, _ = make_records(_people(20, bad_every=4))
    batch_id = start_batch("validate", file_id=file_id, chunk_size=5)
    drain()
    before = read_batch(batch_id)
    chunk_jobs = _chunk_jobs(database, batch_id)
    with db.session_scope(database.sessions) as session:
        for job in chunk_jobs:
            sending.send_after_commit(session, sending.JobMessage(job.id, job.queue))
    drain()
    after = read_batch(batch_id)
    assert (after.processed, after.failed, after.chunks_done, after.completions) == (20, 5, 4, 1)
    assert (before.processed, before.failed, before.chunks_done, before.completions) == (20, 5, 4, 1)
    assert all(fetch(job.id)[0].attempts == 1 for job in chunk_jobs)


def test_completion_fires_once_when_8_threads_finish_chunks_together(
    make_records, start_batch, drain, read_batch, completion_events, database
):
    file_id, _ = make_records(_people(64))
    batch_id = start_batch("normalize", file_id=file_id, chunk_size=1)
    drain()
    batch = read_batch(batch_id)
    assert (batch.status, batch.processed, batch.chunks_done, batch.chunks_total) == (BatchStatus.COMPLETED, 64, 64, 64)
    assert batch.completions == 1
    [event] = completion_events(batch_id)
    assert event.id == batches.completion_event_id(batch_id, 0)
    with database.readers() as session:
        query = select(event_models.Notification).where(event_models.Notification.event_id == event.id)
        notes = session.scalars(query).all()
    assert len(notes) == 1


def test_chunk_that_fails_for_good_counts_its_records_as_failed_and_the_batch_still_completes(
    make_records, start_batch, drain, read_batch, read_records, completion_events, database, fetch
):
    rows = [{"name": f"r{i}"} for i in range(9)]
    rows[4]["crash"] = "yes"  # in the second chunk (records 3..5)
    _, ids = make_records(rows)
    batch_id = start_batch("test.explode", record_ids=ids, chunk_size=3)
    drain()
    batch = read_batch(batch_id)
    assert (batch.status, batch.processed, batch.failed, batch.chunks_done) == (
        BatchStatus.COMPLETED_WITH_ERRORS,
        9,
        3,
        3,
    )
    assert batch.completions == 1
    failed_job = _chunk_jobs(database, batch_id)[1]
    assert fetch(failed_job.id)[0].status == JobStatus.FAILED
    records = read_records(ids)
    assert [r[0] for r in records] == ["processed"] * 3 + ["failed"] * 3 + ["processed"] * 3
    assert records[4][2] == ["the chunk failed: tests.jobs.test_batches.Crash: the whole chunk goes down"]
    assert len(completion_events(batch_id)) == 1


def test_replaying_a_batch_reopens_it_and_completion_fires_once_more_for_the_new_run(
    make_records, start_batch, drain, read_batch, read_records, completion_events, database
):
    rows = [{"name": f"r{i}"} for i in range(9)]
    rows[4]["crash"] = "yes"
    rows[5]["boom"] = "yes"
    _, ids = make_records(rows)
    batch_id = start_batch("test.explode", record_ids=ids, chunk_size=3)
    drain()
    with db.session_scope(database.sessions) as session:  # fix the record that crashed the chunk
        session.execute(update(file_models.Record).where(file_models.Record.id == ids[4]).values(data={"name": "r4"}))
    with db.session_scope(database.sessions) as session:
        replayed = batches.replay_batch(session, batch_id, reason="fixed the data")
        # Read in the replay's transaction: once it commits, the running worker may finish the chunk.
        reopened = session.get(batch_models.Batch, batch_id)
        assert reopened is not None
        assert (reopened.status, reopened.run, reopened.chunks_done) == (BatchStatus.RUNNING, 1, 2)
    assert replayed == [_chunk_jobs(database, batch_id)[1].id]
    drain()
    batch = read_batch(batch_id)
    assert (batch.status, batch.processed, batch.failed, batch.chunks_done) == (
        BatchStatus.COMPLETED_WITH_ERRORS,
        9,
        1,
        3,
    )
    assert (batch.run, batch.completions, batch.completed_run) == (1, 2, 1)
    assert [r[0] for r in read_records(ids)[3:6]] == ["processed", "processed", "failed"]
    events = completion_events(batch_id)
    assert sorted(e.id for e in events) == sorted(batches.completion_event_id(batch_id, run) for run in (0, 1))
    with db.session_scope(database.sessions) as session:  # nothing failed is left: a second replay is a no-op
        assert batches.replay_batch(session, batch_id) == []
    assert read_batch(batch_id).completions == 2


def test_cancel_while_planning_cancels_the_plan_job_and_completes_the_batch_cancelled(
    make_records, start_batch, read_batch, database, completion_events, fetch, request
):
    file_id, ids = make_records(_people(10))
    batch_id = start_batch("validate", file_id=file_id)
    with db.session_scope(database.sessions) as session:
        batches.cancel_batch(session, batch_id)
    request.getfixturevalue("drain")()  # the worker starts only now
    batch = read_batch(batch_id)
    assert (batch.status, batch.chunks_total, batch.processed, batch.completions) == (BatchStatus.CANCELLED, 0, 0, 1)
    assert fetch(batch.job_id)[0].status == JobStatus.CANCELLED
    assert len(completion_events(batch_id)) == 1


def _run_inline(database: db.Database, job: registry.RunningJob) -> None:
    """Run a claimed job's handler and commit its success, as the middleware does."""
    with database.sessions() as session:
        kind = registry.of(session).get(job.kind)
        job.args = kind.parse_args(job.args)
        kind.handler(session, job)
        assert store.complete_job(session.connection(), job)
        session.commit()


def _claim(database: db.Database, job_id: uuid.UUID) -> registry.RunningJob:
    with database.engine.connect() as conn:  # the claim commits on its own
        job = store.claim_job(conn, job_id, worker_id="test", lease_seconds=60)
    assert job is not None
    return job


def test_cancel_skips_chunks_not_started_and_a_chunk_claimed_before_does_no_work(
    make_records, start_batch, read_batch, read_records, database, completion_events, fetch, request
):
    file_id, ids = make_records(_people(12))
    batch_id = start_batch("normalize", file_id=file_id, chunk_size=3)
    with database.readers() as session:
        plan_job_id = session.get(batch_models.Batch, batch_id).job_id
    _run_inline(database, _claim(database, plan_job_id))
    chunk_jobs = _chunk_jobs(database, batch_id)
    running = _claim(database, chunk_jobs[0].id)  # claimed, not run yet
    with db.session_scope(database.sessions) as session:
        cancelled = batches.cancel_batch(session, batch_id)
        assert (cancelled.status, cancelled.chunks_done) == (BatchStatus.RUNNING, 3)
    _run_inline(database, running)
    request.getfixturevalue("drain")()  # the chunks' messages reach a worker only now: all skipped
    batch = read_batch(batch_id)
    assert (batch.status, batch.processed, batch.chunks_done, batch.chunks_total) == (BatchStatus.CANCELLED, 0, 4, 4)
    assert [fetch(job.id)[0].status for job in chunk_jobs] == [JobStatus.SUCCEEDED] + [JobStatus.CANCELLED] * 3
    assert {r[0] for r in read_records(ids)} == {RecordStatus.IMPORTED}
    with database.readers() as session:
        statuses = session.scalars(
            select(batch_models.BatchChunk.status).where(batch_models.BatchChunk.batch_id == batch_id)
        )
        assert set(statuses) == {ChunkStatus.CANCELLED}
    assert len(completion_events(batch_id)) == 1
    with db.session_scope(database.sessions) as session, pytest.raises(batch_errors.BatchNotCancellable):
        batches.cancel_batch(session, batch_id)


def test_planning_makes_one_chunk_row_and_job_per_chunk_with_the_batch_id_as_a_string(
    make_records, start_batch, drain, database
):
    file_id, ids = make_records(_people(10))
    batch_id = start_batch("validate", file_id=file_id, chunk_size=4)
    drain()
    with database.readers() as session:
        chunks = session.scalars(
            select(batch_models.BatchChunk)
            .where(batch_models.BatchChunk.batch_id == batch_id)
            .order_by(batch_models.BatchChunk.number)
        ).all()
        assert [(c.first_id, c.last_id, c.size) for c in chunks] == [
            (ids[0], ids[3], 4),
            (ids[4], ids[7], 4),
            (ids[8], ids[9], 2),
        ]
        jobs = session.scalars(select(models.Job).where(models.Job.kind == batches.CHUNK_KIND)).all()
        assert sorted(j.args["number"] for j in jobs) == [0, 1, 2]
        assert {j.args["batch_id"] for j in jobs} == {str(batch_id)}
        assert session.scalar(select(func.count()).select_from(event_models.Event)) >= 1


def test_jobctl_replay_batch_reopens_the_batch_and_it_completes_again(
    make_records, start_batch, drain, read_batch, database
):
    from typer.testing import CliRunner

    from worker import cli

    rows = [{"name": f"r{i}"} for i in range(4)]
    rows[0]["crash"] = "yes"
    _, ids = make_records(rows)
    batch_id = start_batch("test.explode", record_ids=ids, chunk_size=2)
    drain()
    assert (read_batch(batch_id).failed, read_batch(batch_id).completions) == (2, 1)
    with db.session_scope(database.sessions) as session:
        session.execute(update(file_models.Record).where(file_models.Record.id == ids[0]).values(data={"name": "r0"}))
    result = CliRunner().invoke(cli.app, ["replay", "--batch", str(batch_id), "--yes", "--json"])
    assert result.exit_code == 0, result.output
    drain()
    batch = read_batch(batch_id)
    assert (batch.status, batch.processed, batch.failed, batch.run, batch.completions) == (
        BatchStatus.COMPLETED,
        4,
        0,
        1,
        2,
    )
