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
    Boolean,
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
    false,
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
    #: Reached on creation, on replay (from failed), on a lost lease, on shutdown (interrupted), and
    #: from scheduled when the sweeper finds a delayed job overdue (its delayed message lost).
    QUEUED = "queued"
    #: Claimed by one worker, which holds the claim token and renews the lease.
    #: Reached only from queued, retrying, scheduled once ``run_at`` has passed, or running with an
    #: expired lease.
    RUNNING = "running"
    #: Failed an attempt and waits for ``next_retry_at``; goes back to running when claimed.
    RETRYING = "retrying"
    #: Finished; its work committed in the same transaction as this status. Terminal.
    SUCCEEDED = "succeeded"
    #: Gave up: attempts spent, a PermanentError, or quarantined. Leaves only by a replay.
    FAILED = "failed"
    #: Cancelled: at once from queued or retrying (a cancel, a batch cancel), or from running when
    #: the worker noticed the cancel request (attempt ``cancelled``). Terminal.
    CANCELLED = "cancelled"
    #: Created to run later: waits for ``run_at``. Its delayed message (or, if that is lost, the
    #: sweeper, which makes it queued) brings it to a worker; the claim takes it only once due.
    SCHEDULED = "scheduled"


#: States a worker may claim a job from (besides running with an expired lease).
CLAIMABLE = (JobStatus.QUEUED, JobStatus.RETRYING)
#: SQL of "the job waits for a worker" (status claimable), for partial indexes.
#: States of a job that waits for a worker: claimable, or delayed (claimable once ``run_at`` passed).
WAITING = (*CLAIMABLE, JobStatus.SCHEDULED)
WAITING_SQL = f"status IN ({', '.join(repr(status.value) for status in WAITING)})"
#: SQL of "the job is claimable" / "running" / "failed", for partial indexes (constants, as the
#: planner needs them to match a query's conditions).
CLAIMABLE_SQL = f"status IN ({', '.join(repr(status.value) for status in CLAIMABLE)})"
RUNNING_SQL = f"status = '{JobStatus.RUNNING.value}'"
FAILED_SQL = f"status = '{JobStatus.FAILED.value}'"
#: States a job never leaves on its own.
TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
#: States a cancel ends at once (the job is not running); a running job is asked to stop instead.
CANCELLABLE_AT_ONCE = (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.SCHEDULED)
#: The rows ``uq_jobs_kind_unique_key`` covers: a unique key of a job not yet finished.
UNFINISHED_UNIQUE_SQL = (
    f"unique_key IS NOT NULL AND status NOT IN ({', '.join(repr(status.value) for status in TERMINAL)})"
)


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
    #: The job was asked to stop while running and stopped; its work was rolled back. Final.
    CANCELLED = "cancelled"


def check_in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Job(Base):
    """One unit of background work; its args hold IDs and small values only."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(check_in("status", JobStatus), name="status"),
        Index("ix_jobs_status_kind", "status", "kind"),
        Index("ix_jobs_created_at_id", "created_at", "id"),
        # Unique jobs: one unfinished job per (kind, unique_key); see jobs.store.creating.
        Index(
            "uq_jobs_kind_unique_key",
            "kind",
            "unique_key",
            unique=True,
            postgresql_where=text(UNFINISHED_UNIQUE_SQL),
            sqlite_where=text(UNFINISHED_UNIQUE_SQL),
        ),
        # The dashboard's filtered lists (newest first, keyset pages), its per-queue counts and
        # oldest queued job, its per-minute chart and its failure groups (migration 0012).
        Index("ix_jobs_status_created_at_id", "status", "created_at", "id"),
        Index("ix_jobs_kind_created_at_id", "kind", "created_at", "id"),
        Index("ix_jobs_status_queue_enqueued_at", "status", "queue", "enqueued_at"),
        Index("ix_jobs_finished_at_status", "finished_at", "status"),
        Index("ix_jobs_error_type_created_at_id", "error_type", "created_at", "id"),
        # Jobs with an error (failed or retrying: a few of them), newest first: the walk of a
        # search in the error text.
        Index(
            "ix_jobs_errored_created_at_id",
            "created_at",
            "id",
            postgresql_where=text("error_type IS NOT NULL"),
            sqlite_where=text("error_type IS NOT NULL"),
        ),
        #: The PostgreSQL broker's queue (worker.pgbroker): the waiting jobs of a queue, oldest first.
        Index(
            "ix_jobs_waiting",
            "queue",
            "enqueued_at",
            postgresql_where=text(WAITING_SQL),
            sqlite_where=text(WAITING_SQL),
        ),
        # Partial indexes over states a job is in briefly or rarely, so the sweeper, a replay's
        # selection and the metrics stay flat at millions of finished jobs (migration 0014, measured
        # with tests/benchmarks/scale.py). The success leaves these states: it adds no entry to them.
        # The sweeper's walk to expired leases, soonest expired first.
        Index(
            "ix_jobs_running_lease",
            "lease_expires_at",
            postgresql_where=text(RUNNING_SQL),
            sqlite_where=text(RUNNING_SQL),
        ),
        # The sweeper's walk to queued and retrying jobs whose message seems lost, oldest send first.
        Index(
            "ix_jobs_claimable_enqueued_at",
            "enqueued_at",
            postgresql_where=text(CLAIMABLE_SQL),
            sqlite_where=text(CLAIMABLE_SQL),
        ),
        # A replay's selection: the failed jobs of a kind, oldest failure first.
        Index(
            "ix_jobs_failed_kind_finished_at",
            "kind",
            "finished_at",
            "id",
            postgresql_where=text(FAILED_SQL),
            sqlite_where=text(FAILED_SQL),
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
    #: The broker's key of the last message sent for this job; unset: the job's own ID (its first).
    message_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    #: When the sweeper last found that message still held by the broker (so it sent none).
    resend_checked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: When a cancel was asked for (a running job stops at its next checkpoint, or is interrupted).
    cancel_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Why, as the canceller said.
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    #: When a delayed job is due (None: at once); the claim refuses a ``scheduled`` job before it.
    run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Unique jobs: while this job is unfinished, creating another of its kind with this key
    #: returns this one (the partial unique index ``uq_jobs_kind_unique_key`` decides).
    unique_key: Mapped[str | None] = mapped_column(String(200))
    #: The W3C ``traceparent`` of the span that created the job (see :mod:`jobs.observe.tracecontext`).
    trace_parent: Mapped[str | None] = mapped_column(String(55))
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
    #: The first answer was a unique job's unfinished namesake (``POST /jobs`` answered 200).
    duplicate: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class QueuePause(Base):
    """A paused queue: while its row exists, no job of the queue is claimed (running ones finish);
    its jobs stay ``queued`` and are sent again when the queue is resumed."""

    __tablename__ = "queue_pauses"

    queue: Mapped[str] = mapped_column(String(100), primary_key=True)
    paused_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
