"""The ``jobs`` table as a queue, for the PostgreSQL broker (``worker.pgbroker``): take waiting jobs,
say when the next one is due, give taken ones back, wake the consumers.

A job *waits* while it is ``queued`` or ``retrying`` and due (no ``next_retry_at``, or it passed). A
consumer takes a batch of a queue's waiting jobs, oldest ``enqueued_at`` first, by stamping
``taken_until`` on them in one statement (``FOR UPDATE SKIP LOCKED``: two consumers never take the
same row); the claim (:func:`jobs.store.claim_job`, which clears ``taken_until``) is the ack. A taken
job whose claim never came (its worker died holding it in memory, or skipped it) can be taken again
once ``taken_until`` passes. So a job is one row, and there is no table of messages.

A worker can also *claim* as it takes (:func:`take_and_claim_jobs`): the batch becomes ``running``
under this worker's claim tokens in that one statement, so each job needs no claim of its own (but
a job of a kind with ``max_running``, only taken). A worker does this only for as many jobs as it has
idle threads, so a job claimed that way starts at once; one it gives back unstarted (it stops) is
unclaimed by :func:`unclaim_jobs`.

PostgreSQL only (``FOR UPDATE SKIP LOCKED``, ``LISTEN``/``NOTIFY``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    Text,
    any_,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)

from jobs import models, registry
from jobs.store.base import HotStatement
from jobs.store.clock import db_now, seconds_param
from jobs.store.running import CLAIM_COMMITS_ASYNC, CLAIM_RETURNING, claim_values, running_job

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


def _oldest_waiting(*conditions: Any) -> Any:
    """The IDs of the oldest ``b_limit`` jobs of ``b_queue`` that can be taken (and meet
    ``conditions``), locked, skipping rows another take holds."""
    return (
        select(_jobs.c.id)
        .where(
            *_WAITING,
            or_(_jobs.c.next_retry_at.is_(None), _jobs.c.next_retry_at <= _now),
            or_(_RUN_AT_IF_SCHEDULED.is_(None), _now >= _RUN_AT_IF_SCHEDULED),
            or_(_jobs.c.taken_until.is_(None), _jobs.c.taken_until <= _now),
            *conditions,
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
    .where(_jobs.c.id == any_(func.array(_oldest_waiting())))
    .values(taken_until=db_now(seconds_param("b_take_seconds")))
    .returning(_jobs.c.id, _jobs.c.enqueued_at)
)

_pauses = models.QueuePause.__table__
#: ``b_queue`` is paused (one look-up for the statement, not one per row).
_QUEUE_PAUSED = exists().where(_pauses.c.queue == bindparam("b_queue"))

#: A job of a kind with ``max_running`` (``b_limited``): its claim counts the kind's running jobs
#: first (:func:`jobs.store.claim_job`), so a take only marks it taken.
_LIMITED = _jobs.c.kind == any_(bindparam("b_limited", type_=ARRAY(Text())))


def _claim_unless_limited() -> dict[str, Any]:
    """What a take that claims sets: the claim (each job a token of its own), or for a job of a
    limited kind only ``taken_until`` (the rest as it was)."""
    values: dict[str, Any] = {
        name: case((_LIMITED, _jobs.c[name]), else_=value)
        for name, value in claim_values(func.gen_random_uuid()).items()
        if name != "taken_until"
    }
    values["taken_until"] = case((_LIMITED, db_now(seconds_param("b_take_seconds"))), else_=None)
    return values


#: The take that is also the claim: the oldest waiting jobs of a queue that is not paused, claimed
#: (but those of limited kinds, only taken), committed asynchronously as a claim is
#: (:data:`jobs.store.running.CLAIM_COMMITS_ASYNC`).
_TAKE_AND_CLAIM = (
    update(_jobs)
    .where(_jobs.c.id == any_(func.array(_oldest_waiting(~_QUEUE_PAUSED))), CLAIM_COMMITS_ASYNC)
    .values(**_claim_unless_limited())
    .returning(_jobs.c.id, _jobs.c.status, _jobs.c.claim_token, _jobs.c.enqueued_at, *CLAIM_RETURNING)
)
#: Run straight on the consumer's psycopg connection: it runs for every few jobs.
_HOT_TAKE_AND_CLAIM = HotStatement(_TAKE_AND_CLAIM)

#: A job claimed by a take and never started goes back as it was before (no attempt happened).
_UNCLAIM = (
    update(_jobs)
    .where(
        tuple_(_jobs.c.id, _jobs.c.claim_token).in_(bindparam("b_claims", expanding=True)),
        _jobs.c.status == models.JobStatus.RUNNING.value,
    )
    .values(
        status=models.JobStatus.QUEUED.value,
        attempts=_jobs.c.attempts - 1,
        claim_token=None,
        lease_expires_at=None,
        worker_id=None,
        started_at=None,
    )
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


def take_and_claim_jobs(
    conn: Connection,
    queue: str,
    *,
    limit: int,
    lease_seconds: float,
    worker_id: str,
    limited_kinds: Collection[str] = (),
    take_seconds: float,
) -> list[tuple[uuid.UUID, registry.RunningJob | None]]:
    """Take up to ``limit`` waiting jobs of ``queue``, oldest first, and claim them for
    ``worker_id`` in the same statement (as :func:`jobs.store.claim_job` claims one: ``running``,
    one more attempt, a lease of ``lease_seconds``). A paused queue gives none.

    A job of one of ``limited_kinds`` (with ``max_running``) is only taken, for ``take_seconds``, as
    :func:`take_jobs` takes it: its claim must count the kind's running jobs first. Returns each job's
    ID with its claimed job (None for one only taken). ``conn`` should be in autocommit mode: the
    claims commit with the statement.
    """
    params = {
        "b_queue": queue,
        "b_limit": limit,
        "b_lease_seconds": float(lease_seconds),
        "b_worker": worker_id,
        "b_limited": sorted(limited_kinds),
        "b_take_seconds": float(take_seconds),
    }
    rows = _HOT_TAKE_AND_CLAIM.all(conn, params)
    rows.sort(key=lambda row: (row.enqueued_at is None, row.enqueued_at))
    return [
        (row.id, running_job(row.id, row.claim_token, row) if row.status == models.JobStatus.RUNNING else None)
        for row in rows
    ]


def unclaim_jobs(conn: Connection, jobs: Iterable[registry.RunningJob]) -> int:
    """Give back jobs :func:`take_and_claim_jobs` claimed and no handler started (the worker stops):
    ``queued`` again, the attempt not counted, fenced on each claim token. Returns how many."""
    claims = [(job.id, job.claim_token) for job in jobs]
    if not claims:
        return 0
    return conn.execute(_UNCLAIM, {"b_claims": claims}).rowcount


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
