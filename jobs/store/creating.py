"""Creating jobs: one, or many in one statement."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from jobs import errors, models, registry, sending
from jobs.models import JobStatus
from jobs.store.clock import database_time

_jobs = models.Job.__table__


def create_job(
    session: Session,
    kind: str,
    args: dict[str, Any] | None = None,
    *,
    public_only: bool = False,
    max_attempts: int | None = None,
) -> models.Job:
    """Insert a ``queued`` job in ``session``; its ID goes to the broker once the session commits.

    Raises:
        UnknownJobKind, JobKindNotPublic, InvalidJobArgs: the request does not name a job it may run.
    """
    job_kind = registry.of(session).get(kind)
    if public_only and not job_kind.public:
        raise errors.JobKindNotPublic(f"job kind {kind!r} is internal: only the runner creates it")
    now = database_time(session.connection())  # enqueued_at is compared by the sweeper on another host
    job = models.Job(
        id=uuid.uuid4(),
        kind=kind,
        queue=job_kind.queue,
        args=job_kind.validate_args(args or {}),
        status=JobStatus.QUEUED,
        attempts=0,
        max_attempts=max_attempts or job_kind.max_attempts,
        created_at=now,
        enqueued_at=now,
        replay_count=0,
    )
    session.add(job)
    sending.send_after_commit(session, sending.JobMessage(job.id, job.queue))
    return job


_INSERT_JOBS = insert(_jobs)


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
    }
    rows = [
        {"id": job_id, "args": job_kind.validate_args(args), **common}
        for job_id, args in zip(ids, args_list, strict=True)  # one ID per args, checked above
    ]
    # Core executemany: SQLAlchemy's "insertmanyvalues" turns it into a few multi-row INSERTs.
    session.execute(_INSERT_JOBS, rows)
    for job_id in ids:
        sending.send_after_commit(session, sending.JobMessage(job_id, job_kind.queue))
    return ids
