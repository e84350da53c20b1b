"""Every change of a job's state, in one place.

Functions take the session (or, on the worker's hot path, a Connection) first and keyword arguments
after; they flush or execute but never commit, so several can share a transaction. Statements on the
hot path (claim, complete, fail, renew) are Core statements built once at import: SQLAlchemy caches
their compiled form, so a job costs a few statement executions, not ORM unit-of-work work.

Every update of a running job is *fenced*: it applies only while the row still carries the claim
token this worker got, so a worker that lost its claim can change nothing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import logging
import random
import traceback
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Select, bindparam, case, func, insert, literal, literal_column, select, tuple_, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.orm import Session

from jobs import errors, models, registry, sending
from jobs.config import get_settings
from jobs.models import AttemptOutcome, JobStatus, UTCDateTime

logger = logging.getLogger(__name__)

_jobs = models.Job.__table__
_attempts = models.JobAttempt.__table__

#: Longest error message and traceback kept on a row; the rest is cut.
MAX_ERROR_CHARS = 16_000
#: No retry waits longer than this, however many attempts.
MAX_RETRY_DELAY_SECONDS = 3600.0


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.timezone.utc)


# --- creating ---------------------------------------------------------------------------------


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
    job_kind = registry.get_kind(kind)
    if public_only and not job_kind.public:
        raise errors.JobKindNotPublic(f"job kind {kind!r} is internal: only the runner creates it")
    now = utcnow()
    job = models.Job(
        id=uuid.uuid4(),
        kind=kind,
        queue=job_kind.queue,
        args=job_kind.validate_args(args or {}),
        status=JobStatus.QUEUED,
        attempts=0,
        max_attempts=max_attempts or job_kind.max_attempts or get_settings().max_attempts,
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
    job_kind = registry.get_kind(kind)
    ids = list(job_ids) if job_ids is not None else [uuid.uuid4() for _ in args_list]
    if len(ids) != len(args_list):
        raise ValueError("create_jobs needs one job ID per args")
    if not ids:
        return []
    now = utcnow()
    max_attempts = job_kind.max_attempts or get_settings().max_attempts
    common = {"kind": kind, "queue": job_kind.queue, "status": JobStatus.QUEUED.value, "attempts": 0,
              "max_attempts": max_attempts, "created_at": now, "enqueued_at": now, "replay_count": 0}
    rows = [{"id": job_id, "args": job_kind.validate_args(args), **common} for job_id, args in zip(ids, args_list)]
    # Core executemany: SQLAlchemy's "insertmanyvalues" turns it into a few multi-row INSERTs.
    session.execute(_INSERT_JOBS, rows)
    for job_id in ids:
        sending.send_after_commit(session, sending.JobMessage(job_id, job_kind.queue))
    return ids


# --- claiming ---------------------------------------------------------------------------------

class _HotStatement:
    """A statement on the worker's per-job path: SQLAlchemy Core, compiled once more to PostgreSQL
    text that runs straight on the psycopg cursor of the same connection.

    SQLAlchemy's per-execution work (cache lookup, parameter and result processing) is most of the
    worker's CPU per job; on PostgreSQL the driver gets the SQL and the values directly (UUIDs and
    aware datetimes need no conversion there, and psycopg prepares repeated statements itself).
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        compiled = statement.compile(dialect=postgresql_psycopg.dialect())
        self.postgres_sql = str(compiled)
        #: Values of the statement's own literals (statuses, NULLs), merged under the caller's.
        self.postgres_defaults = dict(compiled.params)

    def first(self, conn: Connection, params: dict[str, Any], *, own_transaction: bool = False) -> Any:
        """Execute with ``params`` in ``conn``'s transaction and return the first row, or None.

        ``own_transaction``: on PostgreSQL, when nothing ran in the transaction yet, run the
        statement on its own in autocommit mode (one round trip instead of BEGIN, it, COMMIT).
        """
        if conn.dialect.name != "postgresql":
            return conn.execute(self.statement, params).first()
        driver = conn.connection.driver_connection
        alone = own_transaction and driver.info.transaction_status == TransactionStatus.IDLE
        if alone:
            driver.autocommit = True
        try:
            with driver.cursor(row_factory=namedtuple_row) as cursor:
                cursor.execute(self.postgres_sql, {**self.postgres_defaults, **params})
                return cursor.fetchone() if cursor.description else None
        except psycopg.Error as exc:
            # What SQLAlchemy would have raised: callers handle one family of errors. A connection
            # that broke is dropped rather than given back to the pool.
            if isinstance(exc, psycopg.OperationalError):
                conn.invalidate()
            raise sa_exc.DBAPIError.instance(self.postgres_sql, params, exc, psycopg.Error) from exc
        finally:
            if alone and not driver.closed:
                driver.autocommit = False


#: The claimable statuses, inlined as constants: nothing left for SQLAlchemy to expand per call.
_CLAIMABLE_SQL = [literal_column(f"'{status.value}'") for status in models.CLAIMABLE]

_CLAIM = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("b_job_id"), _jobs.c.status.in_(_CLAIMABLE_SQL))
    .values(
        status=JobStatus.RUNNING.value,
        attempts=_jobs.c.attempts + 1,
        claim_token=bindparam("b_token"),
        lease_expires_at=bindparam("b_lease"),
        worker_id=bindparam("b_worker"),
        started_at=bindparam("b_now"),
        next_retry_at=None,
    )
    .returning(_jobs.c.kind, _jobs.c.args, _jobs.c.attempts, _jobs.c.max_attempts, _jobs.c.replay_count, _jobs.c.queue)
)


_HOT_CLAIM = _HotStatement(_CLAIM)


@contextlib.contextmanager
def _own_transaction(conn: Connection) -> Iterator[None]:
    """PostgreSQL: nothing (the hot statement runs in autocommit mode). SQLite: BEGIN IMMEDIATE
    ... COMMIT around the block."""
    if conn.in_transaction():
        raise RuntimeError("a claim commits on its own: pass a connection outside any transaction")
    if conn.dialect.name == "postgresql":
        yield
        return
    with conn.begin():
        yield


def claim_job(
    conn: Connection, job_id: uuid.UUID, *, worker_id: str, lease_seconds: float
) -> registry.RunningJob | None:
    """Atomically take a ``queued`` or ``retrying`` job: ``running``, attempts + 1, new token, lease.

    One UPDATE, committed at once in a transaction of its own (``conn`` must not be in one), decides
    it: of two workers racing for a job exactly one gets it. Returns None when the job is not
    claimable (see :func:`describe_unclaimable`); the row is then untouched.
    """
    now = utcnow()
    token = uuid.uuid4()
    with _own_transaction(conn):
        row = _HOT_CLAIM.first(
            conn,
            {
                "b_job_id": job_id,
                "b_token": token,
                "b_lease": now + dt.timedelta(seconds=lease_seconds),
                "b_worker": worker_id,
                "b_now": now,
            },
            own_transaction=True,
        )
    if row is None:
        return None
    return registry.RunningJob(
        id=job_id,
        kind=row.kind,
        args=row.args,
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        run=row.replay_count,
        claim_token=token,
        queue=row.queue,
    )


def describe_unclaimable(conn: Connection, job_id: uuid.UUID) -> tuple[str, bool]:
    """Why a job could not be claimed, and whether it is running under an expired lease."""
    row = conn.execute(
        select(_jobs.c.status, _jobs.c.lease_expires_at).where(_jobs.c.id == job_id)
    ).first()
    if row is None:
        return "no such job", False
    if row.status != JobStatus.RUNNING:
        return f"job is {row.status}", False
    if row.lease_expires_at is not None and row.lease_expires_at < utcnow():
        return "job is running under an expired lease", True
    return "job is running under a live lease", False


# --- finishing an attempt -----------------------------------------------------------------------

_now_param = bindparam("b_now", type_=UTCDateTime())
_fence = (
    _jobs.c.id == bindparam("b_job_id"),
    _jobs.c.claim_token == bindparam("b_token"),
    _jobs.c.status == JobStatus.RUNNING.value,
)
_attempt_columns = ["job_id", "run", "number", "worker_id", "started_at", "finished_at", "outcome"]

_SUCCEED = (
    update(_jobs)
    .where(*_fence)
    .values(
        status=JobStatus.SUCCEEDED.value,
        finished_at=_now_param,
        lease_expires_at=None,
        error_type=None,
        error_message=None,
        error_traceback=None,
    )
    .returning(_jobs.c.id, _jobs.c.replay_count, _jobs.c.attempts, _jobs.c.worker_id, _jobs.c.started_at)
)
_succeeded = _SUCCEED.cte("succeeded")
#: PostgreSQL: the fenced update and the attempt row in one statement (a data-modifying CTE).
_SUCCEED_WITH_ATTEMPT = insert(_attempts).from_select(
    _attempt_columns,
    select(
        _succeeded.c.id,
        _succeeded.c.replay_count,
        _succeeded.c.attempts,
        _succeeded.c.worker_id,
        _succeeded.c.started_at,
        _now_param,
        literal(AttemptOutcome.SUCCEEDED.value),
    ),
).returning(_attempts.c.id)
_INSERT_ATTEMPT = insert(_attempts)
_HOT_SUCCEED_WITH_ATTEMPT = _HotStatement(_SUCCEED_WITH_ATTEMPT)


def complete_job(conn: Connection, job: registry.RunningJob) -> bool:
    """Mark ``job`` ``succeeded`` with its attempt row, in the caller's (the handler's) transaction.

    Returns False, changing nothing, if this worker no longer holds the claim: the caller must then
    roll the handler's work back.
    """
    params = {"b_job_id": job.id, "b_token": job.claim_token, "b_now": utcnow()}
    if conn.dialect.name == "postgresql":
        # A handler that ran no SQL leaves nothing to commit with the success: then it runs alone.
        return _HOT_SUCCEED_WITH_ATTEMPT.first(conn, params, own_transaction=True) is not None
    row = conn.execute(_SUCCEED, params).first()
    if row is None:
        return False
    conn.execute(_INSERT_ATTEMPT, _attempt_row(row, outcome=AttemptOutcome.SUCCEEDED, now=params["b_now"]))
    return True


def _attempt_row(row: Any, *, outcome: AttemptOutcome, now: dt.datetime, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": row.id,
        "run": row.replay_count,
        "number": row.attempts,
        "worker_id": row.worker_id,
        "started_at": row.started_at,
        "finished_at": now,
        "outcome": outcome.value,
        **extra,
    }


_FAIL = (
    update(_jobs)
    .where(*_fence)
    .values(
        status=bindparam("b_status"),
        next_retry_at=bindparam("b_next_retry_at", type_=UTCDateTime()),
        finished_at=bindparam("b_finished_at", type_=UTCDateTime()),
        enqueued_at=func.coalesce(bindparam("b_enqueued_at", type_=UTCDateTime()), _jobs.c.enqueued_at),
        lease_expires_at=None,
        error_type=bindparam("b_error_type"),
        error_message=bindparam("b_error_message"),
        error_traceback=bindparam("b_error_traceback"),
    )
    .returning(_jobs.c.id, _jobs.c.replay_count, _jobs.c.attempts, _jobs.c.worker_id, _jobs.c.started_at)
)


def describe_error(error: BaseException) -> dict[str, str]:
    """Type, message and traceback of ``error``, cut to a size a row can hold."""
    error_type = type(error).__qualname__
    if type(error).__module__ not in ("builtins", "__main__"):
        error_type = f"{type(error).__module__}.{error_type}"
    message = str(error) or (type(error).__doc__ or type(error).__name__).strip().splitlines()[0]
    trace = "".join(traceback.format_exception(error))
    # PostgreSQL text cannot hold NUL: show it escaped rather than fail to record the failure.
    message, trace = message.replace("\x00", "\\x00"), trace.replace("\x00", "\\x00")
    return {
        "error_type": error_type[:200],
        "error_message": message[:MAX_ERROR_CHARS],
        "error_traceback": trace[-MAX_ERROR_CHARS:],
    }


def retry_delay_seconds(attempt: int, *, base_seconds: float) -> float:
    """Exponential backoff with jitter: about ``base * 2**(attempt-1)``, capped at an hour."""
    delay = min(base_seconds * 2 ** (attempt - 1), MAX_RETRY_DELAY_SECONDS)
    return delay * random.uniform(0.9, 1.1)


def record_failure(
    session: Session, job: registry.RunningJob, error: BaseException, *, backoff_seconds: float
) -> JobStatus | None:
    """Record a failed attempt in ``session`` (a fresh one: the handler's was rolled back).

    The job becomes ``retrying`` (its ID re-sent after commit, delayed to ``next_retry_at``) or, when
    its attempts are spent or the error is a :class:`PermanentError`, ``failed``, and then the kind's
    ``on_failed`` hook runs in this same transaction. Returns the new status, or None if this worker
    no longer holds the claim (nothing is changed).
    """
    final = isinstance(error, errors.PermanentError) or job.attempt >= job.max_attempts
    now = utcnow()
    delay = None if final else retry_delay_seconds(job.attempt, base_seconds=backoff_seconds)
    details = describe_error(error)
    conn = session.connection()
    row = conn.execute(
        _FAIL,
        {
            "b_job_id": job.id,
            "b_token": job.claim_token,
            "b_status": (JobStatus.FAILED if final else JobStatus.RETRYING).value,
            "b_next_retry_at": None if delay is None else now + dt.timedelta(seconds=delay),
            "b_finished_at": now if final else None,
            "b_enqueued_at": None if final else now,
            **{f"b_{key}": value for key, value in details.items()},
        },
    ).first()
    if row is None:
        return None
    outcome = AttemptOutcome.FAILED if final else AttemptOutcome.ERROR
    conn.execute(_INSERT_ATTEMPT, _attempt_row(row, outcome=outcome, now=now, **details))
    if final:
        _run_failure_hook(session, job, error)
        return JobStatus.FAILED
    sending.send_after_commit(session, sending.JobMessage(job.id, job.queue, delay_ms=int(delay * 1000)))
    return JobStatus.RETRYING


def _run_failure_hook(session: Session, job: registry.RunningJob, error: BaseException) -> None:
    """Run the kind's ``on_failed`` in a SAVEPOINT: a hook that raises is logged and undone, and
    the failure is still recorded."""
    hook = registry.get_kind(job.kind).on_failed
    if hook is None:
        return
    try:
        with session.begin_nested():
            hook(session, job, error)
    except Exception:
        logger.exception("the on_failed hook of job %s (%s) raised; the failure is recorded without it", job.id, job.kind)


_INTERRUPT = (
    update(_jobs)
    .where(*_fence)
    .values(
        status=JobStatus.QUEUED.value,
        attempts=_jobs.c.attempts - 1,
        claim_token=None,
        lease_expires_at=None,
        enqueued_at=_now_param,
    )
    .returning(_jobs.c.id, _jobs.c.replay_count, _jobs.c.attempts, _jobs.c.worker_id, _jobs.c.started_at)
)


def interrupt_job(session: Session, job: registry.RunningJob, *, reason: str) -> bool:
    """Put a job this worker could not finish back to ``queued`` at once, not counting the attempt.

    Returns False if this worker no longer holds the claim.
    """
    now = utcnow()
    conn = session.connection()
    row = conn.execute(_INTERRUPT, {"b_job_id": job.id, "b_token": job.claim_token, "b_now": now}).first()
    if row is None:
        return False
    attempt = _attempt_row(row, outcome=AttemptOutcome.INTERRUPTED, now=now, error_message=reason)
    attempt["number"] = job.attempt
    conn.execute(_INSERT_ATTEMPT, attempt)
    sending.send_after_commit(session, sending.JobMessage(job.id, job.queue))
    return True


_RENEW = update(_jobs).where(*_fence).values(lease_expires_at=bindparam("b_lease", type_=UTCDateTime()))


def renew_claim(conn: Connection, job: registry.RunningJob, *, lease_seconds: float) -> bool:
    """Extend ``job``'s lease if this worker still holds its claim; False if it does not."""
    params = {
        "b_job_id": job.id,
        "b_token": job.claim_token,
        "b_lease": utcnow() + dt.timedelta(seconds=lease_seconds),
    }
    return conn.execute(_RENEW, params).rowcount == 1


_RENEW_ALL = (
    update(_jobs)
    .where(
        _jobs.c.claim_token.in_(bindparam("b_tokens", expanding=True)),
        _jobs.c.status == JobStatus.RUNNING.value,
    )
    .values(lease_expires_at=bindparam("b_lease", type_=UTCDateTime()))
)


def renew_leases(conn: Connection, claim_tokens: Sequence[uuid.UUID], *, lease_seconds: float) -> int:
    """Extend the leases of the running jobs holding ``claim_tokens`` in one statement (the
    heartbeat). Returns how many were still held."""
    lease = utcnow() + dt.timedelta(seconds=lease_seconds)
    return conn.execute(_RENEW_ALL, {"b_tokens": list(claim_tokens), "b_lease": lease}).rowcount


def checkpoint(session: Session, job: registry.RunningJob, *, lease_seconds: float) -> None:
    """Commit the handler's work so far, with a renewed lease, only while the claim is held.

    Raises:
        ClaimLost: another worker holds the job now; nothing was committed.
    """
    if not renew_claim(session.connection(), job, lease_seconds=lease_seconds):
        raise errors.ClaimLost(f"job {job.id} was taken over by another worker; its work was not committed")
    session.commit()


# --- lost workers -------------------------------------------------------------------------------


def recover_lost_jobs(
    session: Session,
    *,
    quarantine_after_lost: int,
    job_ids: Sequence[uuid.UUID] | None = None,
    limit: int = 500,
) -> list[tuple[uuid.UUID, JobStatus]]:
    """Take back ``running`` jobs whose lease expired (their worker died): attempt ``lost``, then
    ``queued``, or ``failed`` once attempts are spent or the worker died ``quarantine_after_lost``
    times on the job. Returns each job taken back with its new status.
    """
    now = utcnow()
    query = (
        select(models.Job)
        .where(models.Job.status == JobStatus.RUNNING, models.Job.lease_expires_at < now)
        .order_by(models.Job.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if job_ids is not None:
        query = query.where(models.Job.id.in_(job_ids))
    recovered = []
    for job in session.scalars(query):
        recovered.append((job.id, _take_back(session, job, now=now, quarantine_after_lost=quarantine_after_lost)))
    session.flush()
    return recovered


def _as_running(job: models.Job) -> registry.RunningJob:
    """The job as its handler and hooks see it (for a hook run outside the worker)."""
    kind = registry.get_kind(job.kind)
    try:
        args = kind.parse_args(job.args)
    except errors.PermanentError:
        args = job.args
    return registry.RunningJob(
        id=job.id, kind=job.kind, args=args, attempt=job.attempts, max_attempts=job.max_attempts,
        run=job.replay_count, claim_token=job.claim_token or uuid.uuid4(), queue=job.queue,
    )


def _take_back(session: Session, job: models.Job, *, now: dt.datetime, quarantine_after_lost: int) -> JobStatus:
    earlier_deaths = session.scalar(
        select(func.count())
        .select_from(models.JobAttempt)
        .where(
            models.JobAttempt.job_id == job.id,
            models.JobAttempt.run == job.replay_count,
            models.JobAttempt.outcome == AttemptOutcome.LOST,
        )
    )
    deaths = earlier_deaths + 1
    session.add(
        models.JobAttempt(
            job_id=job.id,
            run=job.replay_count,
            number=job.attempts,
            worker_id=job.worker_id,
            started_at=job.started_at,
            finished_at=now,
            outcome=AttemptOutcome.LOST,
            error_message="the worker stopped renewing its lease (it died or stalled)",
        )
    )
    job.claim_token = None
    job.lease_expires_at = None
    if deaths >= quarantine_after_lost or job.attempts >= job.max_attempts:
        error = errors.WorkerLost(
            f"worker died {deaths} times while running this job"
            if deaths >= quarantine_after_lost
            else f"worker died while running this job and its {job.max_attempts} attempts are spent"
        )
        job.status = JobStatus.FAILED
        job.finished_at = now
        job.error_type = "jobs.errors.WorkerLost"
        job.error_message = str(error)
        _run_failure_hook(session, _as_running(job), error)
        return JobStatus.FAILED
    job.status = JobStatus.QUEUED
    job.enqueued_at = now
    sending.send_after_commit(session, sending.JobMessage(job.id, job.queue))
    return JobStatus.QUEUED


# --- the sweeper --------------------------------------------------------------------------------

#: Key of the PostgreSQL advisory lock that lets one sweeper pass run at a time across workers.
SWEEP_LOCK_KEY = 0x6A6F6272  # "jobr"


def try_sweep_lock(session: Session) -> bool:
    """Take the sweeper's lock for this transaction, if no other pass holds it.

    PostgreSQL: ``pg_try_advisory_xact_lock``, released at commit. SQLite: every write transaction
    begins with ``BEGIN IMMEDIATE`` and so already excludes every other writer.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(select(func.pg_try_advisory_xact_lock(SWEEP_LOCK_KEY))).scalar_one())


def resend_overdue_jobs(session: Session, *, older_than_seconds: float, limit: int = 1000) -> list[uuid.UUID]:
    """Send again the jobs whose message seems lost: ``queued`` and last sent before the cutoff, or
    ``retrying`` with ``next_retry_at`` before it. Their ``enqueued_at`` becomes now, so a long
    backlog is not re-sent on every pass. A duplicate message is harmless: the claim skips it.
    """
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=older_than_seconds)
    overdue = (
        select(_jobs.c.id)
        .where(
            _jobs.c.enqueued_at < cutoff,
            (_jobs.c.status == JobStatus.QUEUED.value)
            | ((_jobs.c.status == JobStatus.RETRYING.value) & (_jobs.c.next_retry_at < cutoff)),
        )
        .order_by(_jobs.c.enqueued_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        overdue = overdue.with_for_update(skip_locked=True)
    rows = session.execute(
        update(_jobs).where(_jobs.c.id.in_(overdue.scalar_subquery())).values(enqueued_at=now).returning(_jobs.c.id, _jobs.c.queue)
    ).all()
    for row in rows:
        sending.send_after_commit(session, sending.JobMessage(row.id, row.queue))
    return [row.id for row in rows]


def prune_jobs(
    session: Session, *, statuses: Sequence[JobStatus], older_than: dt.datetime, batch_size: int = 1000
) -> int:
    """Delete one batch of jobs in ``statuses`` finished before ``older_than`` (and, by cascade,
    their history). Returns how many; call again until it returns 0."""
    doomed = (
        select(_jobs.c.id)
        .where(_jobs.c.status.in_([s.value for s in statuses]), _jobs.c.finished_at < older_than)
        .limit(batch_size)
    )
    ids = list(session.scalars(doomed))
    if ids:
        session.execute(_attempts.delete().where(_attempts.c.job_id.in_(ids)))
        session.execute(_jobs.delete().where(_jobs.c.id.in_(ids)))
    return len(ids)


# --- replaying ----------------------------------------------------------------------------------


def select_failed_jobs(
    session: Session,
    *,
    job_ids: Sequence[uuid.UUID] = (),
    kind: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    error_contains: str | None = None,
    error_type: str | None = None,
    batch_id: str | None = None,
    limit: int | None = None,
) -> list[models.Job]:
    """The ``failed`` jobs matching every given filter, oldest failure first (what a replay takes)."""
    query = select(models.Job).where(models.Job.status == JobStatus.FAILED).order_by(models.Job.finished_at, models.Job.id)
    if job_ids:
        query = query.where(models.Job.id.in_(job_ids))
    if kind is not None:
        query = query.where(models.Job.kind == kind)
    if since is not None:
        query = query.where(models.Job.finished_at >= since)
    if until is not None:
        query = query.where(models.Job.finished_at < until)
    if error_contains is not None:
        query = query.where(models.Job.error_message.contains(error_contains, autoescape=True))
    if error_type is not None:
        query = query.where(models.Job.error_type == error_type)
    if batch_id is not None:
        query = query.where(models.Job.args["batch_id"].as_string() == batch_id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count_jobs(session: Session) -> list[tuple[str, str, int]]:
    """How many jobs there are by kind and status."""
    query = (
        select(models.Job.kind, models.Job.status, func.count())
        .group_by(models.Job.kind, models.Job.status)
        .order_by(models.Job.kind, models.Job.status)
    )
    return [(kind, status, count) for kind, status, count in session.execute(query)]


def oldest_queued_at(session: Session) -> dt.datetime | None:
    """When the job waiting longest was queued (None when nothing waits)."""
    return session.scalar(select(func.min(models.Job.enqueued_at)).where(models.Job.status == JobStatus.QUEUED))


def replay_jobs(session: Session, job_ids: Sequence[uuid.UUID], *, reason: str | None = None) -> list[uuid.UUID]:
    """Put the ``failed`` jobs among ``job_ids`` back to ``queued`` for a new run; skip the others.

    One conditional UPDATE: of two replays racing, each job goes to exactly one. The run's history
    stays; a ``replayed`` row records when and why. IDs are sent after commit. Returns those replayed.
    """
    if not job_ids:
        return []
    now = utcnow()
    conn = session.connection()
    rows = conn.execute(
        update(_jobs)
        .where(_jobs.c.id.in_(job_ids), _jobs.c.status == JobStatus.FAILED.value)
        .values(
            status=JobStatus.QUEUED.value,
            attempts=0,
            replay_count=_jobs.c.replay_count + 1,
            enqueued_at=now,
            finished_at=None,
            next_retry_at=None,
            claim_token=None,
            lease_expires_at=None,
            error_type=None,
            error_message=None,
            error_traceback=None,
        )
        .returning(_jobs.c.id, _jobs.c.queue, _jobs.c.replay_count)
    ).all()
    if rows:
        conn.execute(
            _INSERT_ATTEMPT,
            [
                {
                    "job_id": row.id,
                    "run": row.replay_count,
                    "number": 0,
                    "worker_id": None,
                    "started_at": None,
                    "finished_at": now,
                    "outcome": AttemptOutcome.REPLAYED.value,
                    "error_message": reason,
                }
                for row in rows
            ],
        )
    for row in rows:
        sending.send_after_commit(session, sending.JobMessage(row.id, row.queue))
    return [row.id for row in rows]


def replay_job(session: Session, job_id: uuid.UUID, *, reason: str | None = None) -> models.Job:
    """Replay one failed job.

    Raises:
        JobNotFound: no such job.
        JobNotReplayable: the job is not ``failed``.
    """
    job = get_job(session, job_id)
    if not replay_jobs(session, [job_id], reason=reason):
        raise errors.JobNotReplayable(f"job {job_id} is {job.status}; only a failed job can be replayed")
    session.refresh(job)
    return job


# --- reading ------------------------------------------------------------------------------------


def get_job(session: Session, job_id: uuid.UUID) -> models.Job:
    """The job with ``job_id``.

    Raises:
        JobNotFound: there is none.
    """
    job = session.get(models.Job, job_id)
    if job is None:
        raise errors.JobNotFound(f"no job {job_id}")
    return job


def list_attempts(session: Session, job_id: uuid.UUID) -> list[models.JobAttempt]:
    """A job's history, oldest first."""
    return list(
        session.scalars(
            select(models.JobAttempt).where(models.JobAttempt.job_id == job_id).order_by(models.JobAttempt.id)
        )
    )


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    kind: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[models.Job], str | None]:
    """Jobs newest first, and the cursor of the next page (None on the last).

    Raises:
        InvalidCursor: ``cursor`` was not made by this function.
    """
    query = select(models.Job).order_by(models.Job.created_at.desc(), models.Job.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(models.Job.status == status)
    if kind is not None:
        query = query.where(models.Job.kind == kind)
    if cursor is not None:
        created_at, job_id = _decode_cursor(cursor)
        query = query.where(
            tuple_(models.Job.created_at, models.Job.id)
            < tuple_(literal(created_at, UTCDateTime()), literal(job_id, models.Job.id.type))
        )
    jobs = list(session.scalars(query))
    if len(jobs) <= limit:
        return jobs, None
    last = jobs[limit - 1]
    return jobs[:limit], _encode_cursor(last.created_at, last.id)


def _encode_cursor(created_at: dt.datetime, job_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, job_id = raw.split("|")
        parsed = dt.datetime.fromisoformat(created_at)
        if parsed.tzinfo is None:
            raise ValueError("naive time")
        return parsed, uuid.UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise errors.InvalidCursor() from exc


# --- batches ------------------------------------------------------------------------------------


def cancel_jobs(session: Session, job_ids: Sequence[uuid.UUID] | Select[Any]) -> list[uuid.UUID]:
    """Cancel the jobs among ``job_ids`` (a list, or a SELECT of IDs) that have not started:
    ``queued|retrying -> cancelled``, in one conditional UPDATE. A running job is left to finish; a
    message still in the broker for a cancelled job is skipped by the claim. Returns those cancelled.
    """
    rows = session.execute(
        update(_jobs)
        .where(_jobs.c.id.in_(job_ids), _jobs.c.status.in_([s.value for s in models.CLAIMABLE]))
        .values(status=JobStatus.CANCELLED.value, finished_at=utcnow(), next_retry_at=None,
                claim_token=None, lease_expires_at=None)
        .returning(_jobs.c.id)
    ).all()
    return [row.id for row in rows]


def replay_batch(
    session: Session, batch_id: uuid.UUID, *, reason: str | None = None, job_ids: Sequence[uuid.UUID] | None = None
) -> list[uuid.UUID]:
    """Replay a batch's failed chunk jobs (only those among ``job_ids`` if given) and reopen the batch
    for a new run, in the caller's transaction; a failed ``batch.plan`` job is replayed too, and the
    batch goes back to planning. Returns the jobs replayed.

    Raises:
        BatchNotFound: there is no such batch.
    """
    batch = session.get(models.Batch, batch_id, with_for_update=True, populate_existing=True)
    if batch is None:
        raise errors.BatchNotFound(f"no batch {batch_id}")
    chunks = models.BatchChunk.__table__
    query = (
        select(chunks.c.job_id)
        .join(_jobs, _jobs.c.id == chunks.c.job_id)
        .where(chunks.c.batch_id == batch_id, _jobs.c.status == JobStatus.FAILED.value)
    )
    if job_ids is not None:
        query = query.where(chunks.c.job_id.in_(job_ids))
    replayed = replay_jobs(session, list(session.scalars(query)), reason=reason)
    reopen_batch_chunks(session, batch_id, replayed)
    wanted = job_ids is None or batch.job_id in job_ids
    if batch.status == models.BatchStatus.FAILED and batch.job_id is not None and wanted:
        if replay_jobs(session, [batch.job_id], reason=reason):
            replayed.append(batch.job_id)
            batch.status, batch.error_message, batch.finished_at = models.BatchStatus.PLANNING, None, None
    session.flush()
    return replayed


def reopen_batch_chunks(session: Session, batch_id: uuid.UUID, job_ids: Sequence[uuid.UUID]) -> int:
    """Put the failed chunks of these (replayed) chunk jobs back to pending and reopen their batch:
    ``running``, those chunks no longer done, and a new run if its completion had fired for this
    one. The chunks' earlier share of the counts stays until they finish again (and replace it).
    Returns how many chunks were reopened."""
    if not job_ids:
        return 0
    chunks, batches = models.BatchChunk.__table__, models.Batch.__table__
    reopened = session.execute(
        update(chunks)
        .where(chunks.c.batch_id == batch_id, chunks.c.job_id.in_(job_ids),
               chunks.c.status == models.ChunkStatus.FAILED.value)
        .values(status=models.ChunkStatus.PENDING.value)
    ).rowcount
    if reopened:
        finished = batches.c.status != models.BatchStatus.RUNNING.value
        session.execute(
            update(batches)
            .where(batches.c.id == batch_id)
            .values(status=models.BatchStatus.RUNNING.value, chunks_done=batches.c.chunks_done - reopened,
                    run=batches.c.run + case((finished, 1), else_=0), finished_at=None)
        )
    return reopened
