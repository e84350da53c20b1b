"""Job kinds used only by the tests (a worker subprocess loads them with JOBRUNNER_JOB_MODULES)."""

from __future__ import annotations

import logging
import os
import time
import uuid

import pydantic
from sqlalchemy import Column, Integer, MetaData, String, Table, Uuid, insert, update
from sqlalchemy.orm import Session

from jobs import errors, models, registry, store
from jobs.kinds.events import outbox as events

#: Tables only the tests use (not in the migrations).
metadata = MetaData()
notes = Table(
    "test_notes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Uuid, nullable=False),
    Column("text", String(200), nullable=False),
)


class NoteArgs(pydantic.BaseModel):
    text: str = "note"
    raise_after: bool = False
    child: bool = False
    #: Hold the transaction open this long after writing (small steps, so interrupts can land).
    sleep_seconds: float = 0.0


class Boom(Exception):
    """Raised by the test kinds after they wrote something."""


@registry.job_kind("test.note", public=True, args=NoteArgs)
def write_note(session: Session, job: registry.RunningJob) -> None:
    """Write a note row; optionally create a child job; optionally raise afterwards."""
    session.execute(insert(notes).values(job_id=job.id, text=job.args.text))
    if job.args.child:
        store.create_job(session, "noop")
    session.flush()
    _sleep(job.args.sleep_seconds)
    if job.args.raise_after:
        raise Boom(f"raised after writing {job.args.text!r}")


@registry.job_kind("test.internal")
def internal(session: Session, job: registry.RunningJob) -> None:
    """An internal kind: POST /jobs must refuse it."""


class SleepArgs(pydantic.BaseModel):
    seconds: float


@registry.job_kind("test.sleep", args=SleepArgs, time_limit_seconds=0.5, max_attempts=2)
def sleep_past_limit(session: Session, job: registry.RunningJob) -> None:
    """Hold a database transaction open and sleep in small steps (so the time limit can land)."""
    session.execute(insert(notes).values(job_id=job.id, text="before sleep"))
    _sleep(job.args.seconds)


@registry.job_kind("test.wait", args=SleepArgs)
def wait_without_writing(session: Session, job: registry.RunningJob) -> None:
    """Sleep in small steps without touching the database (so SQLite can run several at once)."""
    _sleep(job.args.seconds)


def _sleep(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)


@registry.job_kind("test.stolen")
def stolen_while_running(session: Session, job: registry.RunningJob) -> None:
    """Have "another worker" take the claim over (a new token on the row, written on another
    connection), as if this worker had stalled past its lease; then write a note, stale now.
    (In this order so that SQLite, with one writer at a time, can run it too.)"""
    engine = session.get_bind().engine
    with engine.begin() as conn:
        conn.execute(update(models.Job.__table__).where(models.Job.id == job.id).values(claim_token=uuid.uuid4()))
    session.execute(insert(notes).values(job_id=job.id, text="stale"))


@registry.job_kind("test.checkpoint_stolen")
def checkpoint_after_takeover(session: Session, job: registry.RunningJob) -> None:
    """Like test.stolen, then try to checkpoint: must raise ClaimLost and commit nothing."""
    stolen_while_running(session, job)
    job.checkpoint()


@registry.job_kind("test.checkpoint", max_attempts=1)
def checkpoint_then_raise(session: Session, job: registry.RunningJob) -> None:
    """Checkpoint one note, then write another and raise: the first stays, the second does not."""
    session.execute(insert(notes).values(job_id=job.id, text="kept"))
    job.checkpoint()
    session.execute(insert(notes).values(job_id=job.id, text="lost"))
    raise Boom("after checkpoint")


@registry.job_kind("test.die")
def kill_worker_process(session: Session, job: registry.RunningJob) -> None:
    """Kill the worker process running it (a poison pill)."""
    os._exit(17)


def _note_failure(session: Session, job: registry.RunningJob, error: BaseException) -> None:
    session.execute(insert(notes).values(job_id=job.id, text=f"on_failed: {error}"))


@registry.job_kind("test.hooked", on_failed=_note_failure)
def hooked(session: Session, job: registry.RunningJob) -> None:
    """Succeeds; its on_failed hook leaves a note (for failures decided outside the handler)."""


@registry.job_kind("test.open_cursor_timeout", time_limit_seconds=0.5, max_attempts=1)
def time_out_with_an_open_cursor(session: Session, job: registry.RunningJob) -> None:
    """Leave a SELECT half read, then run past the time limit (a BaseException mid-statement)."""
    session.execute(insert(notes).values(job_id=job.id, text="a"))
    session.execute(insert(notes).values(job_id=job.id, text="b"))
    rows = session.execute(notes.select())
    rows.fetchone()
    _sleep(30)


@registry.job_kind("test.emit_then_fail", max_attempts=1)
def emit_then_fail(session, job):
    """Emit an event from inside a job, then fail: the event must not exist."""
    events.emit(session, "user_registered", {"org_id": "rolled-back", "user_id": "u", "email": "u@example.com"})
    session.flush()
    raise Boom("after emitting")


@registry.job_kind("test.emit")
def emit_from_job(session, job):
    """Emit an event from inside a job that succeeds."""
    events.emit(session, "user_registered", {"org_id": "from-a-job", "user_id": str(job.id), "email": "j@example.com"})


class StubbornArgs(pydantic.BaseModel):
    seconds: float = 60.0
    #: Write a note before sleeping (PostgreSQL: SQLite's one writer would hold off the cancel itself).
    write_first: bool = False


def _note_cancel(session: Session, job: registry.RunningJob) -> None:
    session.execute(insert(notes).values(job_id=job.id, text="on_cancelled"))


@registry.job_kind("test.stubborn", args=StubbornArgs, on_cancelled=_note_cancel)
def sleep_without_checkpoints(session: Session, job: registry.RunningJob) -> None:
    """Never checkpoints: only an interrupt in its thread stops it. Notes "done" if it ends."""
    if job.args.write_first:
        session.execute(insert(notes).values(job_id=job.id, text="uncommitted"))
        session.flush()
    _sleep(job.args.seconds)
    session.execute(insert(notes).values(job_id=job.id, text="done"))


@registry.job_kind("test.limited", args=SleepArgs, max_running=2)
def limited(session: Session, job: registry.RunningJob) -> None:
    """At most two run at once, wherever they run."""
    _sleep(job.args.seconds)


@registry.job_kind("test.elsewhere", queue="control")
def in_another_queue(session: Session, job: registry.RunningJob) -> None:
    """A job of the ``control`` queue (the pause tests pause it)."""


@registry.job_kind("test.log_then_fail", max_attempts=2)
def log_then_fail(session: Session, job: registry.RunningJob) -> None:
    """Log a line of its own (to see the job's context on it), then fail."""
    logging.getLogger("tests.kinds").warning("about to fail")
    raise Boom("logged, then failed")


class FixableArgs(pydantic.BaseModel):
    #: Fails for good (its message starts with ``label``) until a file exists here.
    fixed_when: str
    label: str = "fixable"


@registry.job_kind("test.fixable", args=FixableArgs)
def fail_until_fixed(session: Session, job: registry.RunningJob) -> None:
    """Fail with a PermanentError until the file ``fixed_when`` exists (a bug fixed, then a replay)."""
    if not os.path.exists(job.args.fixed_when):
        raise errors.PermanentError(f"{job.args.label}: not fixed yet")
