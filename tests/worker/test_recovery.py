"""Fault tolerance with real worker processes: crashes, a flushed broker, a dead broker at enqueue,
a stalled worker, a poison pill, a shutdown, a database restart. Waits are bounded and generous;
recovery times are printed as figures, never asserted. After each scenario, what ``jobctl check``
checks holds (the ``invariants_hold`` fixture, run once the test's worker processes are stopped)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from jobs import db, models, store
from jobs.kinds.files import models as file_models
from jobs.kinds.files import uploads as files
from jobs.kinds.files.models import FileStatus
from jobs.models import AttemptOutcome, JobStatus
from tests import kinds
from tests.worker.processes import count_status, create_notes, database_reachable, job_statuses, wait_until

pytestmark = pytest.mark.usefixtures("invariants_hold")


def _all_terminal(database, job_ids):
    statuses = job_statuses(database, job_ids)
    return len(statuses) == len(job_ids) and all(s in models.TERMINAL for s in statuses.values())


def _notes_per_job(database):
    with database.engine.connect() as conn:
        rows = conn.execute(select(kinds.notes.c.job_id, func.count()).group_by(kinds.notes.c.job_id)).all()
    return dict(rows)


@pytest.mark.brokers
def test_kill_9_mid_run_loses_no_job_and_applies_none_twice(database, workers, capsys):
    quick = create_notes(database, 150)
    slow = create_notes(database, 50, sleep_seconds=0.3)
    job_ids = quick + slow
    first = workers()
    wait_until(lambda: count_status(database, job_ids, JobStatus.SUCCEEDED) >= 40, what="some progress")
    wait_until(lambda: JobStatus.RUNNING in job_statuses(database, slow).values(), what="a slow job running")
    first.kill()
    killed_at = store.utcnow()
    running_at_kill = [j for j, s in job_statuses(database, job_ids).items() if s == JobStatus.RUNNING]
    workers()
    wait_until(lambda: _all_terminal(database, job_ids), what="every job terminal")

    statuses = job_statuses(database, job_ids)
    notes = _notes_per_job(database)
    lost_jobs = [job_id for job_id in job_ids if statuses[job_id] != JobStatus.SUCCEEDED]
    doubled = [job_id for job_id in job_ids if notes.get(job_id, 0) > 1]
    assert lost_jobs == [] and doubled == []
    assert all(notes.get(job_id) == 1 for job_id in job_ids), "a job's effect is missing"
    with database.readers() as session:
        lost_rows = session.execute(
            select(models.JobAttempt.job_id, models.JobAttempt.finished_at).where(
                models.JobAttempt.outcome == AttemptOutcome.LOST
            )
        ).all()
        rerun_at = session.scalar(select(func.max(models.Job.started_at)).where(models.Job.id.in_(running_at_kill)))
    assert running_at_kill and set(running_at_kill) <= {row.job_id for row in lost_rows}
    taken_back_at = max(row.finished_at for row in lost_rows)
    with capsys.disabled():
        print(
            f"\n[figure] kill -9 with {len(running_at_kill)} jobs running: {len(lost_jobs)} lost, "
            f"{len(doubled)} applied twice; taken back by the sweeper "
            f"{(taken_back_at - killed_at).total_seconds():.1f} s after the kill (lease 2 s, sweep every "
            f"0.5 s, a new worker starting meanwhile); running again after "
            f"{(rerun_at - killed_at).total_seconds():.1f} s (behind the queue's backlog)"
        )


@pytest.mark.brokers(without=("postgres",))  # the PostgreSQL broker has no message to lose
def test_flushed_broker_with_500_jobs_in_flight_still_runs_them_all(settings, database, workers, flush_broker, capsys):
    job_ids = create_notes(database, 500, sleep_seconds=0.01)
    workers()
    wait_until(lambda: JobStatus.SUCCEEDED in job_statuses(database, job_ids).values(), what="the first success")
    flush_broker()  # the run's own Redis db, or its RabbitMQ vhost's queues (purged)
    flushed_at = time.monotonic()
    wait_until(lambda: _all_terminal(database, job_ids), what="every job terminal")
    assert set(job_statuses(database, job_ids).values()) == {JobStatus.SUCCEEDED}
    assert all(count == 1 for count in _notes_per_job(database).values())
    with capsys.disabled():
        how = "queue purge" if settings.broker_url.startswith("amqp") else "FLUSHDB"
        print(f"\n[figure] {how}: 500 jobs, 0 lost, all done {time.monotonic() - flushed_at:.1f} s after the flush")


def test_jobs_accepted_while_the_broker_is_down_run_once_it_is_back(settings, database, workers):
    # On RabbitMQ: test_rabbitmq.py's node restart accepts jobs while the node is down.
    dead_broker = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(dead_broker)) as client:
        responses = [client.post("/jobs", json={"kind": "noop"}) for _ in range(5)]
    assert [r.status_code for r in responses] == [202] * 5
    job_ids = [r.json()["job_id"] for r in responses]
    assert all(r.json()["status"] == "queued" for r in responses)
    workers()  # a worker on the live broker: its sweeper sends the overdue jobs
    import uuid

    ids = [uuid.UUID(j) for j in job_ids]
    wait_until(lambda: _all_terminal(database, ids), what="the jobs to run")
    assert set(job_statuses(database, ids).values()) == {JobStatus.SUCCEEDED}


@pytest.mark.postgres_only  # SQLite has one writer: a frozen worker inside a write freezes every other
def test_stalled_worker_cannot_commit_after_another_took_its_job(database, workers):
    (job_id,) = create_notes(database, 1, sleep_seconds=3)
    stalled = workers(JOBRUNNER_LEASE_SECONDS="1")
    wait_until(lambda: job_statuses(database, [job_id])[job_id] == JobStatus.RUNNING, what="the job to start")
    stalled.signal(signal.SIGSTOP)  # the whole process freezes: no heartbeat, no progress
    try:
        workers()
        wait_until(lambda: job_statuses(database, [job_id])[job_id] == JobStatus.SUCCEEDED, what="the takeover")
    finally:
        stalled.signal(signal.SIGCONT)
    # The stalled worker wakes up, finishes its handler and tries to commit: the fence refuses. It
    # was alive, so its attempt, recorded as lost by the sweeper, becomes an error (no quarantine).
    wait_until(lambda: "claim_lost" in stalled.log(), what="the stalled worker to give up", timeout=60)
    wait_until(
        lambda: store_fetch(database, job_id)[1][0].outcome == AttemptOutcome.ERROR,
        timeout=30,
        what="the stalled worker to record that it was alive",
    )
    job, history = store_fetch(database, job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert [a.outcome for a in history] == [AttemptOutcome.ERROR, AttemptOutcome.SUCCEEDED]
    assert history[0].error_message == store.ALIVE_MESSAGE
    assert _notes_per_job(database) == {job_id: 1}


def store_fetch(database, job_id):
    with database.readers() as session:
        return store.get_job(session, job_id), store.list_attempts(session, job_id)


def test_poison_pill_is_quarantined_after_three_worker_deaths(database, workers):
    with db.session_scope(database.sessions) as session:
        job_id = store.create_job(session, "test.die", max_attempts=10).id
    worker = workers()
    wait_until(lambda: job_statuses(database, [job_id])[job_id] == JobStatus.FAILED, what="the job to be quarantined")
    job, history = store_fetch(database, job_id)
    assert job.error_message == "worker died 3 times while running this job"
    # The third death ends the run: its attempt is the final one, "failed" (error type WorkerLost).
    assert [a.outcome for a in history] == [AttemptOutcome.LOST, AttemptOutcome.LOST, AttemptOutcome.FAILED]
    assert history[-1].error_type == "jobs.errors.WorkerLost"
    assert len({a.worker_id for a in history}) == 3, "each attempt killed a different worker process"
    assert worker.alive(), "the supervisor replaced each dead worker process"
    wait_until(lambda: worker.log().count("starting another") >= 3, timeout=30, what="the deaths logged")
    assert worker.log().count("starting another") == 3


def test_kill_9_mid_file_resumes_from_its_checkpoint_with_every_row_once(database, workers, settings, capsys):
    rows = 200_000
    two_lines = "two\nlines"  # every thousandth note spans two lines
    content = b"n,name,note\n" + b"".join(
        f'{n},name {n},"{two_lines if n % 1000 == 0 else "one line"}"\n'.encode() for n in range(1, rows + 1)
    )
    with files.UploadSink(settings.storage_dir, max_bytes=len(content)) as sink:
        sink.write(content)
    with db.session_scope(database.sessions) as session:
        file, job = files.register_upload(session, sink, name="big.csv", content_type="text/csv", block_rows=500)
        file_id, job_id = file.id, job.id

    def progress() -> file_models.File:
        with database.readers() as session:
            return files.get_file(session, file_id)

    first = workers()
    wait_until(lambda: progress().rows_total >= 20_000, what="some blocks committed")
    first.kill()
    at_kill = progress()
    assert at_kill.status == FileStatus.PROCESSING, "the file was done before the kill: make it bigger"
    workers()
    wait_until(lambda: progress().status != FileStatus.PROCESSING, what="the file to finish")

    file = progress()
    assert (file.status, file.rows_total, file.rows_imported, file.byte_offset) == (
        FileStatus.PROCESSED,
        rows,
        rows,
        len(content),
    )
    with database.readers() as session:
        numbers = session.scalars(
            select(file_models.Record.row_number).where(file_models.Record.file_id == file_id)
        ).all()
        notes = session.scalars(
            select(file_models.Record.data).where(
                file_models.Record.file_id == file_id, file_models.Record.row_number % 1000 == 0
            )
        ).all()
        history = session.scalars(select(models.JobAttempt.outcome).where(models.JobAttempt.job_id == job_id)).all()
    assert sorted(numbers) == list(range(1, rows + 1))  # every row once: none skipped, none twice
    assert {data["note"] for data in notes} == {two_lines} and len(notes) == rows // 1000
    assert sorted(history) == sorted([AttemptOutcome.LOST, AttemptOutcome.SUCCEEDED])
    with capsys.disabled():
        print(
            f"\n[figure] kill -9 mid-file: killed after {at_kill.rows_total:,} of {rows:,} rows were committed; "
            f"the next worker went on from there; {rows:,} records, each once"
        )


def test_sigterm_puts_an_unfinished_job_back_and_another_worker_finishes_it(database, workers):
    (job_id,) = create_notes(database, 1, sleep_seconds=30)
    first = workers(JOBRUNNER_SHUTDOWN_TIMEOUT_SECONDS="1")
    wait_until(lambda: job_statuses(database, [job_id])[job_id] == JobStatus.RUNNING, what="the job to start")
    assert first.stop() == 0
    job, history = store_fetch(database, job_id)
    assert job.status == JobStatus.QUEUED
    assert job.attempts == 0  # an interrupted attempt does not count
    assert [a.outcome for a in history] == [AttemptOutcome.INTERRUPTED]
    with db.session_scope(database.sessions) as session:  # make the rerun quick
        store.get_job(session, job_id).args = {"text": "0"}
    workers()
    wait_until(lambda: job_statuses(database, [job_id])[job_id] == JobStatus.SUCCEEDED, what="the rerun")
    job, history = store_fetch(database, job_id)
    assert [a.outcome for a in history] == [AttemptOutcome.INTERRUPTED, AttemptOutcome.SUCCEEDED]
    assert job.attempts == 1
    assert _notes_per_job(database) == {job_id: 1}


@pytest.mark.postgres_only
@pytest.mark.restarts_postgres
def test_worker_survives_a_postgresql_restart(throwaway_postgres, database, workers):
    # On a PostgreSQL server of the test's own (initdb in a temp dir), never the machine's: a fast
    # shutdown (connections cut), then a start.
    job_ids = create_notes(database, 200, sleep_seconds=0.05)
    worker = workers()
    wait_until(lambda: JobStatus.SUCCEEDED in job_statuses(database, job_ids).values(), what="the first success")
    started = _postmaster_start_time(database)
    throwaway_postgres.restart()
    wait_until(lambda: database_reachable(database), what="PostgreSQL to answer again")
    assert _postmaster_start_time(database) > started, "the server was not restarted"
    wait_until(lambda: _all_terminal(database, job_ids), what="every job terminal")
    assert worker.alive()
    assert set(job_statuses(database, job_ids).values()) == {JobStatus.SUCCEEDED}
    notes = _notes_per_job(database)
    assert all(notes.get(job_id) == 1 for job_id in job_ids), "a job's effect is missing or applied twice"


def _postmaster_start_time(database):
    with database.engine.connect() as conn:
        return conn.scalar(select(func.pg_postmaster_start_time()))


def test_worker_gets_its_consumer_timeout_before_dramatiq_reads_it(database, workers):
    # Dramatiq reads dramatiq_worker_timeout once, at import; jobctl worker must start Dramatiq with
    # it already set (it bounds how long an idle consumer sleeps, so the pickup latency).
    worker = workers(JOBRUNNER_CONSUMER_TIMEOUT_MS="7")

    def child_with_timeout() -> tuple[int, str] | None:
        # Looked up afresh each time: a child seen while it starts or exits may be gone at the read.
        for child in worker.children():
            value = _environ(child).get("dramatiq_worker_timeout")
            if value is not None:
                return child, value
        return None

    child, environ = wait_until(child_with_timeout, timeout=30, what="the worker's child and its environment")
    assert environ == "7"
    assert "dramatiq" in Path(f"/proc/{child}/cmdline").read_text()


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or exiting (ESRCH)
        return {}
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)
