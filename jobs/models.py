"""Typed SQLAlchemy 2.0 models of the runner's own tables (``jobs``, ``job_attempts``), and the
declarative base and column types the shipped kinds' models (``jobs.kinds.*.models``) share."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UTC = dt.UTC


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware datetime on every database.

    PostgreSQL keeps ``timestamptz``; SQLite keeps naive text, so values are stored in UTC and read back
    with UTC attached.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


#: JSON, stored as JSONB on PostgreSQL.
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
#: A 64-bit key that still autoincrements on SQLite (which only does so for INTEGER PRIMARY KEY).
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base with constraint names Alembic can manage."""

    if TYPE_CHECKING:
        #: Every model here is declared with ``__tablename__``, so it is mapped to a ``Table`` (the
        #: stubs say only ``FromClause``, which ``insert()``/``update()``/``delete()`` refuse).
        __table__: ClassVar[Table]

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class JobStatus(enum.StrEnum):
    """Where a job is in its life. The row, not the broker message, is the truth."""

    #: Waiting for a worker; the ID has been (or will be, by the sweeper) sent to the broker.
    #: Reached on creation, on replay (from failed), on a lost lease, and on shutdown (interrupted).
    QUEUED = "queued"
    #: Claimed by one worker, which holds the claim token and renews the lease.
    #: Reached only from queued, retrying, or running with an expired lease.
    RUNNING = "running"
    #: Failed an attempt and waits for ``next_retry_at``; goes back to running when claimed.
    RETRYING = "retrying"
    #: Finished; its work committed in the same transaction as this status. Terminal.
    SUCCEEDED = "succeeded"
    #: Gave up: attempts spent, a PermanentError, or quarantined. Leaves only by a replay.
    FAILED = "failed"
    #: Dropped before it started (a batch cancel). Terminal.
    CANCELLED = "cancelled"


#: States a worker may claim a job from (besides running with an expired lease).
CLAIMABLE = (JobStatus.QUEUED, JobStatus.RETRYING)
#: SQL of "the job waits for a worker" (status claimable), for partial indexes.
WAITING_SQL = f"status IN ({', '.join(repr(status.value) for status in CLAIMABLE)})"
#: States a job never leaves on its own.
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class AttemptOutcome(enum.StrEnum):
    """How one attempt (or history event) ended."""

    #: The handler returned and its work committed.
    SUCCEEDED = "succeeded"
    #: The handler raised; the job will be retried.
    ERROR = "error"
    #: The attempt failed and the job failed for good: the run's final attempt. The handler raised,
    #: or the worker died on the last attempt or for the ``QUARANTINE_AFTER_LOST``-th time (then
    #: ``error_type`` is ``jobs.errors.WorkerLost``).
    FAILED = "failed"
    #: The worker died while running it (its lease expired) and the job was queued again.
    LOST = "lost"
    #: The worker shut down before it finished; not counted against max attempts.
    INTERRUPTED = "interrupted"
    #: Not an attempt: an operator replayed the failed job (the row says when and why).
    REPLAYED = "replayed"


def check_in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Job(Base):
    """One unit of background work; its args hold IDs and small values only."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(check_in("status", JobStatus), name="status"),
        Index("ix_jobs_status_kind", "status", "kind"),
        Index("ix_jobs_created_at_id", "created_at", "id"),
        #: The PostgreSQL broker's queue (worker.pgbroker): the waiting jobs of a queue, oldest first.
        Index(
            "ix_jobs_waiting",
            "queue",
            "enqueued_at",
            postgresql_where=text(WAITING_SQL),
            sqlite_where=text(WAITING_SQL),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(100), default="default")
    args: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    claim_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    next_retry_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    replay_count: Mapped[int] = mapped_column(Integer, default=0)
    #: PostgreSQL broker only: a consumer took the waiting job and holds it in memory until then;
    #: the claim clears it. Past it, another consumer may take the job (its taker died).
    taken_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class JobAttempt(Base):
    """One attempt at a job (or a replay of it), kept for the job's history."""

    __tablename__ = "job_attempts"
    __table_args__ = (CheckConstraint(check_in("outcome", AttemptOutcome), name="outcome"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: Which run of the job: 0, then one more for each replay.
    run: Mapped[int] = mapped_column(Integer, default=0)
    #: The attempt's number within its run (0 for a replay record).
    number: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key`` and the answer its request got (see :mod:`jobs.idempotency`):
    a retry with the same key and the same request gets that answer again until ``expires_at``.
    Written in the transaction of the job it answers for, and deleted with it."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: SHA-256 (hex) of the request the key was first used for: its operation and its input.
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: The job's status in the first answer.
    job_status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
