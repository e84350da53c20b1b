"""Creating jobs: one, or many in one statement."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from jobs import errors, models, registry, sending
from jobs.models import JobStatus
from jobs.observe import tracecontext
from jobs.store.clock import database_time, db_now

_jobs = models.Job.__table__
_INSERT_JOBS = insert(_jobs)


def create_job(
    session: Session,
    kind: str,
    args: dict[str, Any] | None = None,
    *,
    public_only: bool = False,
    max_attempts: int | None = None,
    run_at: dt.datetime | None = None,
    delay: float | dt.timedelta | None = None,
    unique_key: str | None = None,
    job_id: uuid.UUID | None = None,
) -> models.Job:
    """Insert a job in ``session``; its ID goes to the broker once the session commits.

    It is ``queued``, or ``scheduled`` until ``run_at`` (aware) or ``delay`` (seconds or a timedelta)
    from now: its message is then sent with the broker's delay, and the claim refuses it before then.
    With ``unique_key``, while a job of ``kind`` with that key is unfinished, that job is returned
    instead (see :func:`create_or_find_job`, which also says which happened).

    Raises:
        UnknownJobKind, JobKindNotPublic, InvalidJobArgs: the request does not name a job it may run.
        ValueError: both ``run_at`` and ``delay``, or a naive ``run_at``.
    """
    job, _ = create_or_find_job(
        session,
        kind,
        args,
        public_only=public_only,
        max_attempts=max_attempts,
        run_at=run_at,
        delay=delay,
        unique_key=unique_key,
        job_id=job_id,
    )
    return job


#: How often a unique job's insert is tried while the job holding its key keeps finishing meanwhile.
_UNIQUE_TRIES = 5


def create_or_find_job(
    session: Session,
    kind: str,
    args: dict[str, Any] | None = None,
    *,
    public_only: bool = False,
    max_attempts: int | None = None,
    run_at: dt.datetime | None = None,
    delay: float | dt.timedelta | None = None,
    unique_key: str | None = None,
    job_id: uuid.UUID | None = None,
) -> tuple[models.Job, bool]:
    """:func:`create_job`, saying whether the job returned already existed (True: a unique job's
    unfinished namesake, and nothing was created or sent).

    A unique job is inserted in a SAVEPOINT: the partial unique index on (kind, unique_key) over
    unfinished jobs refuses a second one (on PostgreSQL a concurrent insert waits for the first
    transaction and then fails), and the job holding the key is read and returned. Race-free across
    API processes: the database decides. ``job_id``: the new job's ID, chosen beforehand.
    """
    values, delay_ms = _new_job(
        session,
        kind,
        args,
        public_only=public_only,
        max_attempts=max_attempts,
        run_at=run_at,
        delay=delay,
        unique_key=unique_key,
        job_id=job_id,
    )
    job = models.Job(**values)
    if unique_key is None:
        session.add(job)
    else:
        existing = _add_unique(session, job)
        if existing is not None:
            return existing, True
    sending.send_after_commit(session, sending.JobMessage(job.id, job.queue, delay_ms=delay_ms, message_id=job.id))
    return job, False


#: A job stamped with the database's time, the rest of its values bound (see :func:`insert_job`).
_INSERT_JOB_NOW = insert(_jobs).values(created_at=db_now(), enqueued_at=db_now())


def insert_job(
    session: Session,
    kind: str,
    args: dict[str, Any] | None = None,
    *,
    public_only: bool = False,
    run_at: dt.datetime | None = None,
    delay: float | dt.timedelta | None = None,
    unique_key: str | None = None,
) -> tuple[uuid.UUID, JobStatus, bool]:
    """:func:`create_or_find_job` for a caller that needs no ``Job`` object (``POST /jobs``): the job's
    ID, its status, and whether it already existed.

    A job with no unique key is one Core ``INSERT`` (its statement built once, so SQLAlchemy's
    compiled cache serves it) instead of a flush of SQLAlchemy's unit of work, which costs several
    times as much CPU for one row. A unique job takes :func:`create_or_find_job`'s path (its SAVEPOINT).
    """
    if unique_key is not None:
        job, found = create_or_find_job(
            session, kind, args, public_only=public_only, run_at=run_at, delay=delay, unique_key=unique_key
        )
        return job.id, JobStatus(job.status), found
    values, delay_ms = _new_job(session, kind, args, public_only=public_only, run_at=run_at, delay=delay)
    if isinstance(values["created_at"], db_now):
        del values["created_at"], values["enqueued_at"]  # the statement writes them
        session.execute(_INSERT_JOB_NOW, values)
    else:
        session.execute(_INSERT_JOBS, values)
    job_id, queue = values["id"], values["queue"]
    sending.send_after_commit(session, sending.JobMessage(job_id, queue, delay_ms=delay_ms, message_id=job_id))
    return job_id, values["status"], False


def _new_job(
    session: Session,
    kind: str,
    args: dict[str, Any] | None,
    *,
    public_only: bool,
    max_attempts: int | None = None,
    run_at: dt.datetime | None,
    delay: float | dt.timedelta | None,
    unique_key: str | None = None,
    job_id: uuid.UUID | None = None,
) -> tuple[dict[str, Any], int | None]:
    """A new job's column values, checked (kind, args, due time), and the delay of its message in ms."""
    job_kind = registry.of(session).get(kind)
    if public_only and not job_kind.public:
        raise errors.JobKindNotPublic(f"job kind {kind!r} is internal: only the runner creates it")
    # created_at and enqueued_at are the database's time (the sweeper compares enqueued_at on other
    # hosts): written by the INSERT itself, unless a due time must be computed here. So a job added
    # to an AsyncSession's sync session (jobs.enqueue) costs no query before its flush.
    now: dt.datetime | None = None
    stamp: Any = db_now()
    if run_at is not None or delay is not None:
        now = stamp = database_time(session.connection())
        run_at = _due_time(now, run_at=run_at, delay=delay)
    scheduled = now is not None and run_at is not None and run_at > now
    values = {
        "id": job_id or uuid.uuid4(),
        "kind": kind,
        "queue": job_kind.queue,
        "args": job_kind.validate_args(args or {}),
        "status": JobStatus.SCHEDULED if scheduled else JobStatus.QUEUED,
        "attempts": 0,
        "max_attempts": max_attempts or job_kind.max_attempts,
        "created_at": stamp,
        "enqueued_at": stamp,
        "replay_count": 0,
        "run_at": run_at,
        "unique_key": unique_key,
        "trace_parent": tracecontext.current(),
    }
    delay_ms = math.ceil((run_at - now).total_seconds() * 1000) if scheduled and run_at and now else None
    return values, delay_ms


def _due_time(
    now: dt.datetime, *, run_at: dt.datetime | None, delay: float | dt.timedelta | None
) -> dt.datetime | None:
    if run_at is not None and delay is not None:
        raise ValueError("give run_at or delay, not both")
    if run_at is not None and run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware")
    if delay is not None:
        return now + (delay if isinstance(delay, dt.timedelta) else dt.timedelta(seconds=delay))
    return run_at


def _add_unique(session: Session, job: models.Job) -> models.Job | None:
    """Insert ``job`` unless an unfinished job of its kind holds its unique key: then that job."""
    for _ in range(_UNIQUE_TRIES):
        try:
            with session.begin_nested():
                session.add(job)
        except sa_exc.IntegrityError:
            # Rolled back to the SAVEPOINT (the pending job is expunged): read the key's holder.
            existing = session.scalar(
                select(models.Job).where(
                    models.Job.kind == job.kind,
                    models.Job.unique_key == job.unique_key,
                    models.Job.status.not_in([status.value for status in models.TERMINAL]),
                )
            )
            if existing is not None:
                return existing
            continue  # it finished meanwhile: the key is free again
        return None
    raise errors.UniqueKeyContended()


def create_jobs(
    session: Session,
    kind: str,
    args_list: Sequence[dict[str, Any]],
    *,
    job_ids: Sequence[uuid.UUID] | None = None,
) -> list[uuid.UUID]:
    """Insert many ``queued`` jobs of one kind in one executemany (no ORM objects); each ID goes to
    the broker once the session commits. ``job_ids``: IDs chosen beforehand (one per args).

    Raises:
        UnknownJobKind, InvalidJobArgs: as :func:`create_job`.
    """
    job_kind = registry.of(session).get(kind)
    ids = list(job_ids) if job_ids is not None else [uuid.uuid4() for _ in args_list]
    if len(ids) != len(args_list):
        raise ValueError("create_jobs needs one job ID per args")
    if not ids:
        return []
    now = database_time(session.connection())
    max_attempts = job_kind.max_attempts
    common = {
        "kind": kind,
        "queue": job_kind.queue,
        "status": JobStatus.QUEUED.value,
        "attempts": 0,
        "max_attempts": max_attempts,
        "created_at": now,
        "enqueued_at": now,
        "replay_count": 0,
        "trace_parent": tracecontext.current(),
    }
    rows = [
        {"id": job_id, "args": job_kind.validate_args(args), **common}
        for job_id, args in zip(ids, args_list, strict=True)  # one ID per args, checked above
    ]
    # Core executemany: SQLAlchemy's "insertmanyvalues" turns it into a few multi-row INSERTs.
    session.execute(_INSERT_JOBS, rows)
    for job_id in ids:
        sending.send_after_commit(session, sending.JobMessage(job_id, job_kind.queue, message_id=job_id))
    return ids
