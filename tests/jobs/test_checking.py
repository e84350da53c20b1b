"""The invariant checks behind ``jobctl check``: a database after real work (a real worker, the
sweeper, a replay, a batch, a file import) passes; each invariant broken on purpose, with rows
written directly, is reported, naming the row that breaks it."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete, insert, update
from sqlalchemy.orm import Session

from jobs import db, errors, models, store
from jobs.kinds.batches import models as batch_models
from jobs.kinds.batches import service as batches
from jobs.kinds.files import models as file_models
from jobs.kinds.files import uploads as files
from jobs.models import AttemptOutcome, JobStatus
from jobs.registry import REGISTRY_KEY
from jobs.store import checking
from tests.worker.processes import wait_until
from worker import sweeper

_jobs = models.Job.__table__
_attempts = models.JobAttempt.__table__


def _check(database, kind_registry, limit=checking.DEFAULT_LIMIT):
    with database.readers() as session:
        return checking.run_checks(session, checking.checks_of(kind_registry), limit=limit)


def _found(report):
    return {(v.invariant, v.subject) for v in report.violations}


def _set(database, table, key, **values):
    with database.engine.begin() as conn:
        conn.execute(update(table).where(table.c.id == key).values(**values))


def _claim(database, job_id, worker_id="test-worker"):
    with database.engine.connect() as conn:
        job = store.claim_job(conn, job_id, worker_id=worker_id, lease_seconds=30)
    assert job is not None
    return job


def _fail(database, make_job):
    """A job failed for good as a worker fails it (claim, then a PermanentError)."""
    job_id = make_job("fail")
    job = _claim(database, job_id)
    with db.session_scope(database.sessions) as session:
        assert store.record_failure(session, job, errors.PermanentError("no"), backoff_seconds=0) == JobStatus.FAILED
    return job_id


def _succeed(database, make_job):
    job_id = make_job("noop")
    job = _claim(database, job_id)
    with db.session_scope(database.sessions) as session:
        assert store.complete_job(session.connection(), job)
    return job_id


def test_the_shipped_features_declare_their_checks(kind_registry):
    names = [check.__name__ for check in checking.checks_of(kind_registry)]
    assert names[: len(checking.CORE_CHECKS)] == [check.__name__ for check in checking.CORE_CHECKS]
    assert {"check_batch_counters", "check_file_counts"} <= set(names)


def test_a_database_after_real_work_passes(database, kind_registry, settings, make_job, make_records, drain, fetch):
    ok = [make_job("noop") for _ in range(5)]
    flaky = make_job("fail", {"fail_times": 1})
    broken = make_job("fail", {"message": "broken"})
    file_id, record_ids = make_records([{"name": f"n{i}", "email": "a@b.c" if i % 3 else ""} for i in range(30)])
    with db.session_scope(database.sessions) as session:
        batch, _ = batches.create_batch(session, "validate", file_id=file_id, chunk_size=7)
        batch_id = batch.id
    content = b"a,b\n1,2\n3\n4,5\n"
    with files.UploadSink(settings.storage_dir, max_bytes=len(content)) as sink:
        sink.write(content)
    with db.session_scope(database.sessions) as session:
        upload, _ = files.register_upload(session, sink, name="f.csv", content_type="text/csv")
        upload_id = upload.id
    drain()
    assert {fetch(j)[0].status for j in ok} | {fetch(flaky)[0].status} == {JobStatus.SUCCEEDED}
    assert fetch(broken)[0].status == JobStatus.FAILED
    with db.session_scope(database.sessions) as session:
        store.replay_job(session, broken, reason="again")
    drain()
    # A worker that died on the job's last attempt: the sweeper fails it. (Created without a
    # message, so that the test's worker does not run it first.)
    with Session(database.engine, info={REGISTRY_KEY: kind_registry}) as session, session.begin():
        lost = store.create_job(session, "noop", max_attempts=1).id
    _claim(database, lost, worker_id="dead-worker")
    _set(database, _jobs, lost, lease_expires_at=store.utcnow() - dt.timedelta(seconds=1))
    # The sweeper of the test's worker may be the one that does it.
    wait_until(lambda: sweeper.sweep_once(database, settings) and fetch(lost)[0].status == JobStatus.FAILED)
    with database.readers() as session:
        assert session.get(batch_models.Batch, batch_id).status == batch_models.BatchStatus.COMPLETED_WITH_ERRORS
        assert session.get(file_models.File, upload_id).rows_rejected == 1
    report = _check(database, kind_registry)
    assert report.ok, report.violations
    assert report.truncated == [] and "check_final_attempts" in report.checks


def test_a_failed_job_without_its_failed_attempt_is_reported(database, kind_registry, make_job):
    job_id = _fail(database, make_job)
    assert _check(database, kind_registry).ok
    with database.engine.begin() as conn:
        conn.execute(update(_attempts).where(_attempts.c.job_id == job_id).values(outcome=AttemptOutcome.LOST.value))
    report = _check(database, kind_registry)
    assert _found(report) == {("final-attempt", f"job {job_id}")}
    assert "failed, but 0 `failed` attempt(s) in run 0" in str(report.violations[0])


def test_a_succeeded_job_with_two_final_attempts_is_reported(database, kind_registry, make_job):
    job_id = _succeed(database, make_job)
    assert _check(database, kind_registry).ok
    with database.engine.begin() as conn:
        conn.execute(
            insert(_attempts).values(
                job_id=job_id, run=0, number=1, finished_at=store.utcnow(), outcome=AttemptOutcome.FAILED.value
            )
        )
    report = _check(database, kind_registry)
    assert ("final-attempt", f"job {job_id}") in _found(report)


def test_a_final_attempt_of_an_earlier_run_does_not_count(database, kind_registry, make_job):
    job_id = _fail(database, make_job)
    with db.session_scope(database.sessions) as session:
        store.replay_job(session, job_id)
    assert _check(database, kind_registry).ok  # queued in run 1; run 0's failed attempt is history
    _set(database, _jobs, job_id, status=JobStatus.FAILED.value)  # failed again, without an attempt
    assert _found(_check(database, kind_registry)) == {("final-attempt", f"job {job_id}")}


@pytest.mark.parametrize("column", ["worker_id", "claim_token", "lease_expires_at"])
def test_a_running_job_without_worker_token_or_lease_is_reported(database, kind_registry, make_job, column):
    job_id = make_job("noop")
    _claim(database, job_id)
    assert _check(database, kind_registry).ok
    _set(database, _jobs, job_id, **{column: None})
    report = _check(database, kind_registry)
    assert _found(report) == {("running-lease", f"job {job_id}")}
    missing = {"worker_id": "worker", "claim_token": "claim token", "lease_expires_at": "lease"}[column]
    assert f"running without a {missing}" in report.violations[0].detail


def test_a_finished_job_holding_a_lease_is_reported(database, kind_registry, make_job):
    job_id = _succeed(database, make_job)
    _set(database, _jobs, job_id, lease_expires_at=store.utcnow())
    assert _found(_check(database, kind_registry)) == {("running-lease", f"job {job_id}")}


def test_attempts_beyond_the_max_are_reported(database, kind_registry, make_job):
    over_count = make_job("noop", max_attempts=1)
    over_rows = make_job("noop", max_attempts=2)
    now = store.utcnow()
    with database.engine.begin() as conn:
        conn.execute(update(_jobs).where(_jobs.c.id == over_count).values(attempts=2))
        conn.execute(update(_jobs).where(_jobs.c.id == over_rows).values(attempts=3, status=JobStatus.RETRYING.value))
        conn.execute(
            insert(_attempts),
            [
                {"job_id": over_rows, "run": 0, "number": n, "finished_at": now, "outcome": outcome}
                for n, outcome in ((1, "error"), (2, "lost"), (3, "error"))
            ],
        )
    found = _found(_check(database, kind_registry))
    assert {("attempts-max", f"job {over_count}"), ("attempts-max", f"job {over_rows}")} <= found


def test_an_attempt_count_that_disagrees_with_the_history_is_reported(database, kind_registry, make_job):
    done = _succeed(database, make_job)
    running = make_job("noop")
    _claim(database, running)
    assert _check(database, kind_registry).ok  # a running job's attempt has no row yet
    _set(database, _jobs, done, attempts=0)
    _set(database, _jobs, running, attempts=2)
    found = _found(_check(database, kind_registry))
    assert found == {("attempt-count", f"job {done}"), ("attempt-count", f"job {running}")}


def test_batch_counters_that_differ_from_their_chunks_are_reported(database, kind_registry, make_records, drain):
    file_id, _ = make_records([{"name": f"n{i}", "email": "a@b.c"} for i in range(10)])
    with db.session_scope(database.sessions) as session:
        batch_ids = [batches.create_batch(session, "validate", file_id=file_id, chunk_size=3)[0].id for _ in range(5)]
    drain()
    assert _check(database, kind_registry).ok
    wrong = {"processed": 9, "failed": 1, "chunks_total": 3, "chunks_done": 5, "total": 11}
    for batch_id, (column, value) in zip(batch_ids, wrong.items(), strict=True):
        _set(database, batch_models.Batch.__table__, batch_id, **{column: value})
    report = _check(database, kind_registry)
    assert _found(report) == {("batch-counters", f"batch {batch_id}") for batch_id in batch_ids}
    details = {v.subject: v.detail for v in report.violations}
    assert "processed 9 != 10" in details[f"batch {batch_ids[0]}"]
    assert "chunks_total 3 != 4" in details[f"batch {batch_ids[2]}"]


def test_file_counts_that_differ_from_their_records_are_reported(database, kind_registry, make_records):
    counted, _ = make_records([{"a": "1"}, {"a": "2"}])
    summed, _ = make_records([{"a": "1"}])
    orphaned, record_ids = make_records([{"a": "1"}])
    assert _check(database, kind_registry).ok
    files_table = file_models.File.__table__
    _set(database, files_table, counted, rows_imported=3, rows_total=3)
    _set(database, files_table, summed, rows_rejected=1)
    with database.engine.begin() as conn:
        conn.execute(delete(files_table).where(files_table.c.id == orphaned))
    report = _check(database, kind_registry)
    assert _found(report) == {
        ("file-counts", f"file {counted}"),
        ("file-counts", f"file {summed}"),
        ("file-counts", f"file {orphaned}"),
    }
    details = {v.subject: v.detail for v in report.violations}
    assert "rows_imported 3, but 2 records" in details[f"file {counted}"]
    assert "rows_total 1 != 1 imported + 1 rejected" in details[f"file {summed}"]
    assert "no such file, but 1 records" in details[f"file {orphaned}"]


def test_each_check_lists_at_most_the_limit_and_says_so(database, kind_registry, make_job):
    job_ids = [_fail(database, make_job) for _ in range(3)]
    with database.engine.begin() as conn:
        conn.execute(delete(_attempts).where(_attempts.c.job_id.in_(job_ids)))
    report = _check(database, kind_registry, limit=2)
    final = [v for v in report.violations if v.invariant == "final-attempt"]
    assert len(final) == 2 and {v.subject for v in final} <= {f"job {j}" for j in job_ids}
    assert "check_final_attempts" in report.truncated
    assert len([v for v in _check(database, kind_registry).violations if v.invariant == "final-attempt"]) == 3
