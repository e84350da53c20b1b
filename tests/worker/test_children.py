"""``jobctl worker --processes N`` keeps its process count: a dead worker process is replaced, the
others keep running their jobs, a process dying in a loop stops the worker, and SIGTERM still stops
every process gracefully. Real processes; waits are bounded and generous, times are printed as
figures, never asserted."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from sqlalchemy import func, select

from jobs import db, models, store
from jobs.models import AttemptOutcome, JobStatus
from tests import kinds
from tests.worker.processes import count_status, create_notes, job_statuses, wait_until


def _succeeded_by(database, pid, after):
    """Attempts the worker process ``pid`` finished with success after ``after``."""
    with database.readers() as session:
        return session.scalar(
            select(func.count()).where(
                models.JobAttempt.worker_id.like(f"%:{pid}"),
                models.JobAttempt.outcome == AttemptOutcome.SUCCEEDED,
                models.JobAttempt.finished_at > after,
            )
        )


def _gone(pid):
    """Whether ``pid`` is gone (or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _notes_per_job(database):
    with database.engine.connect() as conn:
        rows = conn.execute(select(kinds.notes.c.job_id, func.count()).group_by(kinds.notes.c.job_id)).all()
    return dict(rows)


def test_a_killed_worker_process_is_replaced_while_the_others_keep_working(database, workers, capsys):
    job_ids = create_notes(database, 400, sleep_seconds=0.05)
    worker = workers(processes=2, threads=2)
    pids = wait_until(lambda: len(worker.worker_pids()) == 2 and worker.worker_pids(), what="two worker processes")
    wait_until(lambda: count_status(database, job_ids, JobStatus.SUCCEEDED) >= 40, what="some progress")
    victim, survivor = pids
    os.kill(victim, signal.SIGKILL)
    killed_at, killed_mono = store.utcnow(), time.monotonic()
    done_at_kill = count_status(database, job_ids, JobStatus.SUCCEEDED)

    replaced = wait_until(
        lambda: len(now := worker.worker_pids()) == 2 and victim not in now and now, what="a new worker process"
    )
    replaced_after = time.monotonic() - killed_mono
    assert survivor in replaced, "the other worker process was stopped"
    assert worker.alive()
    wait_until(lambda: _succeeded_by(database, survivor, killed_at) > 0, what="the survivor to keep working")
    (newcomer,) = set(replaced) - {survivor}
    wait_until(
        lambda: count_status(database, job_ids, JobStatus.SUCCEEDED) == len(job_ids), what="every job to succeed"
    )
    all_done_after = time.monotonic() - killed_mono

    assert set(job_statuses(database, job_ids).values()) == {JobStatus.SUCCEEDED}
    notes = _notes_per_job(database)
    assert all(notes.get(job_id) == 1 for job_id in job_ids), "a job's effect is missing or applied twice"
    with database.readers() as session:
        lost = session.scalar(select(func.count()).where(models.JobAttempt.outcome == AttemptOutcome.LOST))
    by_newcomer = _succeeded_by(database, newcomer, killed_at)
    by_survivor = _succeeded_by(database, survivor, killed_at)
    assert worker.alive() and sorted(worker.worker_pids()) == sorted(replaced)
    assert worker.log().count("starting another") == 1
    assert worker.stop() == 0
    with capsys.disabled():
        print(
            f"\n[figure] kill -9 of 1 of 2 worker processes ({done_at_kill} of {len(job_ids)} jobs done): "
            f"replaced after {replaced_after:.1f} s; after the kill the survivor ran {by_survivor} jobs, the "
            f"new process {by_newcomer}; {lost} attempts lost and taken back by the sweeper; all done "
            f"{all_done_after:.1f} s after the kill, each job once"
        )


def test_a_killed_dramatiq_master_takes_its_worker_process_along_and_is_replaced(database, workers):
    # kill -9 of a child's Dramatiq master leaves its worker process orphaned: the supervisor kills
    # it (the child's process group) before starting another, so no extra consumer runs on.
    job_ids = create_notes(database, 100, sleep_seconds=0.05)
    worker = workers(processes=1, threads=2)
    (master,) = wait_until(worker.children, what="the child")
    (orphan,) = wait_until(worker.worker_pids, what="its worker process")
    wait_until(lambda: count_status(database, job_ids, JobStatus.SUCCEEDED) >= 10, what="some progress")
    os.kill(master, signal.SIGKILL)
    wait_until(lambda: _gone(orphan), what="the orphaned worker process to be killed")
    replaced = wait_until(lambda: (now := worker.worker_pids()) and orphan not in now and now, what="a new one")
    assert len(replaced) == 1 and master not in worker.children()
    wait_until(
        lambda: count_status(database, job_ids, JobStatus.SUCCEEDED) == len(job_ids), what="every job to succeed"
    )
    notes = _notes_per_job(database)
    assert all(notes.get(job_id) == 1 for job_id in job_ids), "a job's effect is missing or applied twice"
    assert worker.stop() == 0


def test_a_worker_process_dying_in_a_loop_stops_the_worker_with_a_message(workers):
    # A job module that cannot be imported: every worker process dies at start.
    worker = workers(
        processes=2,
        args=["--restart-limit", "2", "--restart-window", "600"],
        JOBRUNNER_JOB_MODULES="tests.no_such_module",
    )
    code = worker.process.wait(timeout=120)
    assert code == 1
    assert "died 3 times within 600 s (the limit is 2): stopping the worker" in worker.log()
    assert worker.log().count("starting another") == 2  # replaced twice, then given up


def test_sigterm_stops_every_worker_process_gracefully_with_exit_0(database, workers):
    with db.session_scope(database.sessions) as session:
        job_ids = [store.create_job(session, "test.wait", {"seconds": 60}).id for _ in range(2)]
    # One thread and one prefetched message per process: each process takes one of the two jobs.
    worker = workers(processes=2, threads=1, JOBRUNNER_SHUTDOWN_TIMEOUT_SECONDS="1", JOBRUNNER_PREFETCH="1")
    wait_until(lambda: count_status(database, job_ids, JobStatus.RUNNING) == 2, what="both jobs running")
    with database.readers() as session:
        running_on = set(session.scalars(select(models.Job.worker_id).where(models.Job.id.in_(job_ids))))
    assert len(running_on) == 2, "the two jobs run in the same process"
    processes = worker.children() + worker.worker_pids()
    assert len(processes) == 4
    assert worker.stop() == 0
    assert set(job_statuses(database, job_ids).values()) == {JobStatus.QUEUED}
    with database.readers() as session:
        outcomes = session.scalars(select(models.JobAttempt.outcome).where(models.JobAttempt.job_id.in_(job_ids)))
        assert sorted(outcomes) == [AttemptOutcome.INTERRUPTED] * 2
    assert not [pid for pid in processes if os.path.exists(f"/proc/{pid}")], "a worker process outlived the stop"
