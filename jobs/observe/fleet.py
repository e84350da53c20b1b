"""The fleet's numbers, read from the database at scrape time: what every worker and API process
has done, whichever wrote it. Each read touches only small tables or the partial indexes of
migration 0011 (jobs not finished, batches and files open), never a whole large table."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, func, literal_column, select, type_coerce

from jobs import models
from jobs.models import JobStatus
from jobs.observe.models import AttemptCounter, NamedCounter, WorkerBeat

_jobs = models.Job.__table__
_counters = AttemptCounter.__table__
_named = NamedCounter.__table__
_beats = WorkerBeat.__table__

#: The states a job is not finished in: every state but the terminal ones, so a new one shows up.
UNFINISHED = tuple(status for status in JobStatus if status not in models.TERMINAL)


def _unfinished() -> ColumnElement[bool]:
    """``status NOT IN (<terminal>)`` with the states inlined as constants, as the partial index
    ``ix_jobs_unfinished`` says it (bound parameters would keep a prepared plan off that index)."""
    return _jobs.c.status.not_in([literal_column(f"'{status.value}'") for status in models.TERMINAL])


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptCount:
    """The attempts of one kind that ended in one outcome, in one duration bucket (shards summed)."""

    kind: str
    outcome: str
    worker_lost: bool
    bucket: int
    count: int
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class UnfinishedGroup:
    """The jobs not finished of one queue, kind and state."""

    queue: str
    kind: str
    status: str
    count: int
    #: ``queued``: when the longest-waiting one was queued (see :func:`unfinished_jobs`).
    queued_since: dt.datetime | None
    #: ``running``: how many hold an expired lease.
    expired: int


def unfinished_jobs(conn: Connection, *, now: dt.datetime) -> list[UnfinishedGroup]:
    """The jobs not finished, by queue, kind and state, in one scan of the partial index.

    A ``queued`` job waits since its creation, or, replayed, since its last send (a replay sends
    it). The ``enqueued_at`` of a job never replayed is not used: the sweeper moves it on each
    re-send, which would hide a queue that nobody consumes."""
    since = case((_jobs.c.replay_count == 0, _jobs.c.created_at), else_=_jobs.c.enqueued_at)
    queued = _jobs.c.status == literal_column(f"'{JobStatus.QUEUED.value}'")
    keys = (_jobs.c.queue, _jobs.c.kind, _jobs.c.status)
    query = (
        select(
            *keys,
            func.count(),
            # min() keeps the column's type, so its values come back timezone-aware on SQLite too.
            func.min(type_coerce(since, _jobs.c.created_at.type)).filter(queued),
            func.count().filter(_jobs.c.lease_expires_at < now),
        )
        .where(_unfinished())
        # In the index's column order: PostgreSQL then aggregates the rows as the index-only scan
        # yields them (a GroupAggregate), instead of hashing every unfinished job's three strings.
        .group_by(_jobs.c.status, _jobs.c.queue, _jobs.c.kind)
    )
    return [UnfinishedGroup(row[0], row[1], row[2], int(row[3]), row[4], int(row[5])) for row in conn.execute(query)]


def attempt_counts(conn: Connection) -> list[AttemptCount]:
    """Every attempt counter, the shards summed."""
    keys: Sequence[Any] = (_counters.c.kind, _counters.c.outcome, _counters.c.worker_lost, _counters.c.bucket)
    query = select(*keys, func.sum(_counters.c.count), func.sum(_counters.c.seconds)).group_by(*keys)
    return [
        AttemptCount(row[0], row[1], bool(row[2]), int(row[3]), int(row[4]), float(row[5]))
        for row in conn.execute(query)
    ]


def named_counters(conn: Connection) -> dict[str, int]:
    """Every named counter's value."""
    return {row.name: int(row.value) for row in conn.execute(select(_named.c.name, _named.c.value))}


def worker_beats(conn: Connection, *, since: dt.datetime) -> tuple[int, dt.datetime | None]:
    """How many worker processes beat after ``since``, and the newest beat of any."""
    query = select(func.count().filter(_beats.c.beat_at > since), func.max(_beats.c.beat_at))
    row = conn.execute(query).one()
    return int(row[0]), row[1]
