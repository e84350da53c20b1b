"""The ``jobs`` table as a queue, for the PostgreSQL broker (``worker.pgbroker``): take waiting jobs,
say when the next one is due, give taken ones back, wake the consumers.

A job *waits* while it is ``queued`` or ``retrying`` and due (no ``next_retry_at``, or it passed). A
consumer takes a batch of a queue's waiting jobs, oldest ``enqueued_at`` first, by stamping
``taken_until`` on them in one statement (``FOR UPDATE SKIP LOCKED``: two consumers never take the
same row); the claim (:func:`jobs.store.claim_job`, which clears ``taken_until``) is the ack. A taken
job whose claim never came (its worker died holding it in memory, or skipped it) can be taken again
once ``taken_until`` passes. So a job is one row, and there is no table of messages.

PostgreSQL only (``FOR UPDATE SKIP LOCKED``, ``LISTEN``/``NOTIFY``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable

from sqlalchemy import Connection, any_, bindparam, case, func, literal_column, or_, select, update

from jobs import models
from jobs.store.clock import db_now, seconds_param

_jobs = models.Job.__table__

#: The channel a ``NOTIFY`` wakes consumers on; its payload is the queue's name.
CHANNEL = "jobrunner_jobs"

#: The statuses inlined as constants, as ``ix_jobs_waiting``'s predicate is written: a prepared
#: statement's generic plan can then still use that partial index.
_WAITING = (
    _jobs.c.queue == bindparam("b_queue"),
    _jobs.c.status.in_([literal_column(f"'{status.value}'") for status in models.WAITING]),
)
#: The database's clock (as the claim and the leases): a consumer host's own clock does not matter.
_now = db_now()
#: When a delayed job falls due (NULL for the others).
_RUN_AT_IF_SCHEDULED = case((_jobs.c.status == literal_column(f"'{models.JobStatus.SCHEDULED.value}'"), _jobs.c.run_at))

_OLDEST_WAITING = (
    select(_jobs.c.id)
    .where(
        *_WAITING,
        or_(_jobs.c.next_retry_at.is_(None), _jobs.c.next_retry_at <= _now),
        or_(_RUN_AT_IF_SCHEDULED.is_(None), _now >= _RUN_AT_IF_SCHEDULED),
        or_(_jobs.c.taken_until.is_(None), _jobs.c.taken_until <= _now),
    )
    .order_by(_jobs.c.enqueued_at)
    .limit(bindparam("b_limit"))
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
#: ``id = ANY(ARRAY(subquery))``, not ``id IN (subquery)``: the batch is picked first (an InitPlan),
#: then its rows are found by primary key. With ``IN``, a prepared statement's generic plan (the
#: LIMIT unknown) can hash-join the batch against a scan of the whole table.
_TAKE = (
    update(_jobs)
    .where(_jobs.c.id == any_(func.array(_OLDEST_WAITING)))
    .values(taken_until=db_now(seconds_param("b_take_seconds")))
    .returning(_jobs.c.id, _jobs.c.enqueued_at)
)

_DUE_AT = func.greatest(_jobs.c.next_retry_at, _jobs.c.taken_until, _RUN_AT_IF_SCHEDULED)
_NEXT_DUE = select(func.min(_DUE_AT)).where(*_WAITING, _now < _DUE_AT)

_RELEASE = (
    update(_jobs)
    .where(_jobs.c.id.in_(bindparam("b_ids", expanding=True)), _jobs.c.taken_until.is_not(None))
    .values(taken_until=None)
)

_NOTIFY = select(func.pg_notify(CHANNEL, bindparam("b_queue")))


def take_jobs(conn: Connection, queue: str, *, limit: int, take_seconds: float) -> list[uuid.UUID]:
    """Take up to ``limit`` waiting jobs of ``queue``, oldest first, for ``take_seconds``.

    ``conn`` should be in autocommit mode (the row locks last one statement): a taken job is marked,
    not locked, until it is claimed or its ``taken_until`` passes.
    """
    rows = list(conn.execute(_TAKE, {"b_queue": queue, "b_limit": limit, "b_take_seconds": float(take_seconds)}))
    rows.sort(key=lambda row: (row.enqueued_at is None, row.enqueued_at))
    return [row.id for row in rows]


def next_due_at(conn: Connection, queue: str) -> dt.datetime | None:
    """When the soonest of ``queue``'s jobs that wait but cannot be taken yet (a retry not due, a
    job taken by another consumer) can be taken; None if there is none."""
    due: dt.datetime | None = conn.execute(_NEXT_DUE, {"b_queue": queue}).scalar()
    return due


def release_jobs(conn: Connection, job_ids: Iterable[uuid.UUID]) -> int:
    """Give taken jobs back at once (a worker stopping with them unclaimed); returns how many."""
    ids = list(job_ids)
    if not ids:
        return 0
    return conn.execute(_RELEASE, {"b_ids": ids}).rowcount


def notify_waiting(conn: Connection, queues: Iterable[str]) -> None:
    """Wake the consumers of ``queues`` (``NOTIFY``): at once in autocommit mode, else when
    ``conn``'s transaction commits (never if it rolls back). PostgreSQL folds the same queue's
    notifications of one transaction into one."""
    for queue in sorted(set(queues)):
        conn.execute(_NOTIFY, {"b_queue": queue})


def count_unfinished(conn: Connection, queue: str, *, running: bool = True) -> int:
    """How many of ``queue``'s jobs wait (``queued``, ``retrying``), and, with ``running``, run."""
    statuses = [status.value for status in models.CLAIMABLE]
    if running:
        statuses.append(models.JobStatus.RUNNING.value)
    query = select(func.count()).select_from(_jobs).where(_jobs.c.queue == queue, _jobs.c.status.in_(statuses))
    return int(conn.execute(query).scalar_one())
