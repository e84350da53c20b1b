"""The tables behind the fleet's counters and heartbeats (migration 0011).

``attempt_counters`` is kept by a database trigger on ``job_attempts`` (see the migration): every
attempt row, whichever code path writes it, adds one to its (kind, outcome) counter in the same
transaction, so the counters are exact across processes and hosts and never go down (pruning
deletes attempts, not counts). The rows are sharded by the writing connection (PostgreSQL:
``pg_backend_pid() % ATTEMPT_SHARDS``), so two workers finishing jobs of one kind rarely wait on
one row; a scrape sums the shards.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from jobs.models import Base, UTCDateTime

#: Upper bounds (seconds) of the attempt-duration histogram's buckets; the last bucket is +Inf.
#: Migration 0011 writes them into its trigger: changing them takes a new migration.
DURATION_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: The bucket of an attempt without a meaningful duration (a replay record, a lost attempt).
NO_DURATION = -1
#: Shards of each counter on PostgreSQL (SQLite has one writer at a time: one shard).
ATTEMPT_SHARDS = 16
#: The error type of a final attempt whose worker died (as :mod:`jobs.store.recovery` writes it).
WORKER_LOST_TYPE = "jobs.errors.WorkerLost"


class AttemptCounter(Base):
    """How many attempts of a kind ended in an outcome, in one duration bucket, on one shard."""

    __tablename__ = "attempt_counters"

    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(100), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), primary_key=True)
    #: 1 when the worker died on this attempt (outcome ``lost``, or ``failed`` with WorkerLost).
    worker_lost: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Index into :data:`DURATION_BUCKETS_SECONDS` (its length: +Inf), or :data:`NO_DURATION`.
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Sum of the attempts' durations.
    seconds: Mapped[float] = mapped_column(Float, default=0.0)


class NamedCounter(Base):
    """A counter of something that leaves no attempt row (the sweeper's re-sends), by name."""

    __tablename__ = "named_counters"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class WorkerBeat(Base):
    """The last heartbeat of each worker process (written every third of a lease, even when idle)."""

    __tablename__ = "worker_beats"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    beat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
