"""A job's attempt, from its claim to its outcome: claim, succeed, fail, interrupt, renew, checkpoint."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import traceback
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from jobs import errors, models, registry, sending
from jobs.models import AttemptOutcome, JobStatus
from jobs.store import queues
from jobs.store.base import INSERT_ATTEMPT, HotStatement, attempt_row, fresh_message
from jobs.store.clock import db_now, seconds_param

logger = logging.getLogger(__name__)

_jobs = models.Job.__table__
_attempts = models.JobAttempt.__table__

#: Longest error message and traceback kept on a row; the rest is cut.
MAX_ERROR_CHARS = 16_000
#: No retry waits longer than this, however many attempts.
MAX_RETRY_DELAY_SECONDS = 3600.0


#: The claimable statuses, inlined as constants: nothing left for SQLAlchemy to expand per call.
_CLAIMABLE_SQL: list[ColumnElement[Any]] = [literal_column(f"'{status.value}'") for status in models.CLAIMABLE]

_pauses = models.QueuePause.__table__
#: The job's queue is paused: a lookup by primary key in a table that is usually empty.
_QUEUE_PAUSED = exists().where(_pauses.c.queue == _jobs.c.queue)
#: A delayed job is claimable once due (on the database's clock), so a message that arrives early
#: (a resend, a broker's early delivery) cannot start it before its ``run_at``.
_DUE_SCHEDULED_SQL = and_(
    _jobs.c.status == literal_column(f"'{JobStatus.SCHEDULED.value}'"), _jobs.c.run_at <= db_now()
)


#: PostgreSQL: the claim's transaction commits without waiting for its WAL to reach the disk
#: (``synchronous_commit`` off for that transaction only, set inside the claim statement itself).
#: Safe by the fence: WAL is replayed in order, so a job's later success or failure, committed
#: synchronously, makes its claim durable too; a claim that a server crash loses takes the job back
#: to before it, and the worker's fenced outcome then changes nothing (its work is rolled back and
#: the job runs again), exactly as when a sweeper takes a job back. It saves a WAL flush per job.
CLAIM_COMMITS_ASYNC = func.set_config("synchronous_commit", "off", True).is_not(None)


def _claim_statement(limited_kinds: frozenset[str], *, async_commit: bool = False) -> Any:
    """The claim UPDATE: a claimable (or due scheduled) job of a queue not paused, of a kind not in
    ``limited_kinds`` (those are claimed by :func:`_claim_limited`, which counts their running jobs
    first). ``async_commit``: PostgreSQL only, see :data:`CLAIM_COMMITS_ASYNC`."""
    where = [
        _jobs.c.id == bindparam("b_job_id"),
        or_(_jobs.c.status.in_(_CLAIMABLE_SQL), _DUE_SCHEDULED_SQL),
        ~_QUEUE_PAUSED,
    ]
    if async_commit:
        where.append(CLAIM_COMMITS_ASYNC)
    if limited_kinds:
        where.append(_jobs.c.kind.not_in([literal(kind) for kind in sorted(limited_kinds)]))
    return update(_jobs).where(*where).values(**claim_values(bindparam("b_token"))).returning(*CLAIM_RETURNING)


def claim_values(token: Any) -> dict[str, Any]:
    """What a claim sets: ``running``, one more attempt, the claim ``token`` (a parameter or a SQL
    expression), the lease (``b_lease_seconds`` from the database's now) and ``b_worker``."""
    return {
        "status": JobStatus.RUNNING.value,
        "attempts": _jobs.c.attempts + 1,
        "claim_token": token,
        "lease_expires_at": db_now(seconds_param("b_lease_seconds")),
        "worker_id": bindparam("b_worker"),
        "started_at": db_now(),
        "next_retry_at": None,
        "taken_until": None,
    }


#: What a claim returns: what :func:`running_job` needs besides the job's ID and claim token.
CLAIM_RETURNING = (
    _jobs.c.kind,
    _jobs.c.args,
    _jobs.c.attempts,
    _jobs.c.max_attempts,
    _jobs.c.replay_count,
    _jobs.c.queue,
    _jobs.c.trace_parent,
)


def running_job(job_id: uuid.UUID, token: uuid.UUID, row: Any) -> registry.RunningJob:
    """The claimed job, from a claim's returned ``row`` (:data:`CLAIM_RETURNING`)."""
    return registry.RunningJob(
        id=job_id,
        kind=row.kind,
        args=row.args,
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        run=row.replay_count,
        claim_token=token,
        queue=row.queue,
        trace_parent=row.trace_parent,
    )


_CLAIM = _claim_statement(frozenset())


@functools.lru_cache(maxsize=8)
def _hot_claim(limited_kinds: frozenset[str]) -> HotStatement:
    """The claim as a :class:`HotStatement`, built once per set of limited kinds (one per worker)."""
    return HotStatement(
        _claim_statement(limited_kinds), postgres_statement=_claim_statement(limited_kinds, async_commit=True)
    )


#: The claim of a worker whose kinds have no ``max_running``.
_HOT_CLAIM = _hot_claim(frozenset())


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
    conn: Connection,
    job_id: uuid.UUID,
    *,
    worker_id: str,
    lease_seconds: float,
    limits: Mapping[str, int] | None = None,
) -> registry.RunningJob | None:
    """Atomically take a ``queued`` or ``retrying`` job, or a ``scheduled`` one that is due:
    ``running``, attempts + 1, new token, lease.

    One UPDATE, committed at once in a transaction of its own (``conn`` must not be in one), decides
    it: of two workers racing for a job exactly one gets it. A job of a paused queue is not taken.
    ``limits``: the kinds declared with ``max_running`` and their limits (the registry's); a job of
    one of them is taken only under its limit (see :mod:`jobs.store.queues`). Returns None when the
    job is not claimable (see :func:`describe_unclaimable`); the row is then untouched. ``started_at``
    and the lease are the database's time (:mod:`jobs.store.clock`), whatever this host's clock says.

    Raises:
        KindAtLimit: the job's kind has ``max_running`` jobs running; the job stays as it was.
    """
    token = uuid.uuid4()
    params = {"b_job_id": job_id, "b_token": token, "b_lease_seconds": float(lease_seconds), "b_worker": worker_id}
    limited_kinds = frozenset(limits or ())
    with _own_transaction(conn):
        row = _hot_claim(limited_kinds).first(conn, params, own_transaction=True)
    if row is None and limits:
        row = _claim_limited(conn, job_id, params, limits)
    if row is None:
        return None
    return running_job(job_id, token, row)


def _claim_limited(conn: Connection, job_id: uuid.UUID, params: dict[str, Any], limits: Mapping[str, int]) -> Any:
    """The claim of a job whose kind has a ``max_running`` limit: one claim of the kind at a time
    (see :func:`jobs.store.queues.lock_kind`), counting the kind's running jobs first."""
    with conn.begin():
        kind = queues.kind_of(conn, job_id)
        if kind is None or kind not in limits:
            return None
        queues.lock_kind(conn, kind)
        if queues.count_running(conn, kind) >= limits[kind]:
            raise errors.KindAtLimit(f"{limits[kind]} job(s) of {kind} are running, its max_running")
        return conn.execute(_CLAIM, params).first()


def describe_unclaimable(conn: Connection, job_id: uuid.UUID) -> tuple[str, bool]:
    """Why a job could not be claimed, and whether it is running under an expired lease."""
    expired = _jobs.c.lease_expires_at < db_now()
    due = _jobs.c.run_at <= db_now()
    query = select(_jobs.c.status, _jobs.c.queue, _jobs.c.run_at, expired.label("expired"), due.label("due"))
    row = conn.execute(query.where(_jobs.c.id == job_id)).first()
    if row is None:
        return "no such job", False
    if row.status == JobStatus.SCHEDULED and not row.due:
        return f"job is scheduled for {row.run_at.isoformat() if row.run_at else 'later'}", False
    if row.status in (*models.CLAIMABLE, JobStatus.SCHEDULED) and queues.select_pause_of(conn, row.queue):
        return f"queue {row.queue} is paused", False
    if row.status != JobStatus.RUNNING:
        return f"job is {row.status}", False
    if row.expired:
        return "job is running under an expired lease", True
    return "job is running under a live lease", False


# --- finishing an attempt -----------------------------------------------------------------------

_now = db_now()
#: The claim fence: an update of a running job applies only while this worker holds its claim.
FENCE = (
    _jobs.c.id == bindparam("b_job_id"),
    _jobs.c.claim_token == bindparam("b_token"),
    _jobs.c.status == JobStatus.RUNNING.value,
)
_attempt_columns = ["job_id", "run", "number", "worker_id", "started_at", "finished_at", "outcome"]

_SUCCEED = (
    update(_jobs)
    .where(*FENCE)
    .values(
        status=JobStatus.SUCCEEDED.value,
        finished_at=_now,
        lease_expires_at=None,
        error_type=None,
        error_message=None,
        error_traceback=None,
    )
    .returning(
        _jobs.c.id,
        _jobs.c.replay_count,
        _jobs.c.attempts,
        _jobs.c.worker_id,
        _jobs.c.started_at,
        _jobs.c.finished_at,
    )
)
_succeeded = _SUCCEED.cte("succeeded")
#: PostgreSQL: the fenced update and the attempt row in one statement (a data-modifying CTE).
_SUCCEED_WITH_ATTEMPT = (
    insert(_attempts)
    .from_select(
        _attempt_columns,
        select(
            _succeeded.c.id,
            _succeeded.c.replay_count,
            _succeeded.c.attempts,
            _succeeded.c.worker_id,
            _succeeded.c.started_at,
            _succeeded.c.finished_at,
            literal(AttemptOutcome.SUCCEEDED.value),
        ),
    )
    .returning(_attempts.c.id)
)
_HOT_SUCCEED_WITH_ATTEMPT = HotStatement(_SUCCEED_WITH_ATTEMPT)


def complete_job(conn: Connection, job: registry.RunningJob) -> bool:
    """Mark ``job`` ``succeeded`` with its attempt row, in the caller's (the handler's) transaction.

    Returns False, changing nothing, if this worker no longer holds the claim: the caller must then
    roll the handler's work back.
    """
    params = {"b_job_id": job.id, "b_token": job.claim_token}
    if conn.dialect.name == "postgresql":
        # A handler that ran no SQL leaves nothing to commit with the success: then it runs alone.
        return _HOT_SUCCEED_WITH_ATTEMPT.first(conn, params, own_transaction=True) is not None
    row = conn.execute(_SUCCEED, params).first()
    if row is None:
        return False
    conn.execute(INSERT_ATTEMPT, attempt_row(row, outcome=AttemptOutcome.SUCCEEDED, finished_at=row.finished_at))
    return True


_FAIL_COLUMNS: dict[str, Any] = {
    "lease_expires_at": None,
    "error_type": bindparam("b_error_type"),
    "error_message": bindparam("b_error_message"),
    "error_traceback": bindparam("b_error_traceback"),
}
_FAIL_RETURNING = (_jobs.c.id, _jobs.c.replay_count, _jobs.c.attempts, _jobs.c.worker_id, _jobs.c.started_at)
#: A failed attempt that will be retried: ``next_retry_at`` is the database's time plus the delay.
_RETRY = (
    update(_jobs)
    .where(*FENCE)
    .values(
        status=JobStatus.RETRYING.value,
        next_retry_at=db_now(seconds_param("b_delay_seconds")),
        enqueued_at=_now,
        message_id=bindparam("b_message_id"),
        **_FAIL_COLUMNS,
    )
    .returning(*_FAIL_RETURNING, _now.label("now"))
)
#: The run's last attempt failed.
_FAIL = (
    update(_jobs)
    .where(*FENCE)
    .values(status=JobStatus.FAILED.value, next_retry_at=None, finished_at=_now, **_FAIL_COLUMNS)
    .returning(*_FAIL_RETURNING, _jobs.c.finished_at.label("now"))
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
    delay = min(base_seconds * 2.0 ** (attempt - 1), MAX_RETRY_DELAY_SECONDS)
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
    delay = None if final else retry_delay_seconds(job.attempt, base_seconds=backoff_seconds)
    details = describe_error(error)
    conn = session.connection()
    params = {"b_job_id": job.id, "b_token": job.claim_token, **{f"b_{key}": value for key, value in details.items()}}
    message = None if delay is None else fresh_message(job.id, job.queue, delay_ms=int(delay * 1000))
    if message is not None:
        params.update(b_delay_seconds=delay, b_message_id=message.message_id)
    row = conn.execute(_FAIL if final else _RETRY, params).first()
    if row is None:
        return None
    outcome = AttemptOutcome.FAILED if final else AttemptOutcome.ERROR
    conn.execute(INSERT_ATTEMPT, attempt_row(row, outcome=outcome, finished_at=row.now, **details))
    if message is None:
        run_failure_hook(session, job, error)
        return JobStatus.FAILED
    sending.send_after_commit(session, message)
    return JobStatus.RETRYING


def run_failure_hook(session: Session, job: registry.RunningJob, error: BaseException) -> None:
    """Run the kind's ``on_failed`` in a SAVEPOINT: a hook that raises is logged and undone, and
    the failure is still recorded."""
    kind = registry.of(session).find(job.kind)
    hook = kind.on_failed if kind is not None else None
    if hook is None:
        return
    try:
        with session.begin_nested():
            hook(session, job, error)
    except Exception:
        logger.exception(
            "the on_failed hook of job %s (%s) raised; the failure is recorded without it", job.id, job.kind
        )


_INTERRUPT = (
    update(_jobs)
    .where(*FENCE)
    .values(
        status=JobStatus.QUEUED.value,
        attempts=_jobs.c.attempts - 1,
        claim_token=None,
        lease_expires_at=None,
        enqueued_at=_now,
        message_id=bindparam("b_message_id"),
    )
    .returning(
        _jobs.c.id,
        _jobs.c.replay_count,
        _jobs.c.attempts,
        _jobs.c.worker_id,
        _jobs.c.started_at,
        _jobs.c.enqueued_at,
    )
)


def interrupt_job(session: Session, job: registry.RunningJob, *, reason: str) -> bool:
    """Put a job this worker could not finish back to ``queued`` at once, not counting the attempt.

    Returns False if this worker no longer holds the claim.
    """
    conn = session.connection()
    message = fresh_message(job.id, job.queue)
    params = {"b_job_id": job.id, "b_token": job.claim_token, "b_message_id": message.message_id}
    row = conn.execute(_INTERRUPT, params).first()
    if row is None:
        return False
    attempt = attempt_row(
        row, outcome=AttemptOutcome.INTERRUPTED, finished_at=row.enqueued_at, number=job.attempt, error_message=reason
    )
    conn.execute(INSERT_ATTEMPT, attempt)
    sending.send_after_commit(session, message)
    return True


_RENEW = update(_jobs).where(*FENCE).values(lease_expires_at=db_now(seconds_param("b_lease_seconds")))


def renew_claim(conn: Connection, job: registry.RunningJob, *, lease_seconds: float) -> bool:
    """Extend ``job``'s lease if this worker still holds its claim; False if it does not."""
    params = {"b_job_id": job.id, "b_token": job.claim_token, "b_lease_seconds": float(lease_seconds)}
    return conn.execute(_RENEW, params).rowcount == 1


_RENEW_ALL = (
    update(_jobs)
    .where(
        _jobs.c.claim_token.in_(bindparam("b_tokens", expanding=True)),
        _jobs.c.status == JobStatus.RUNNING.value,
    )
    .values(lease_expires_at=db_now(seconds_param("b_lease_seconds")))
)


def renew_leases(conn: Connection, claim_tokens: Sequence[uuid.UUID], *, lease_seconds: float) -> int:
    """Extend the leases of the running jobs holding ``claim_tokens`` in one statement (the
    heartbeat). Returns how many were still held."""
    params = {"b_tokens": list(claim_tokens), "b_lease_seconds": float(lease_seconds)}
    return conn.execute(_RENEW_ALL, params).rowcount


_CHECKPOINT = (
    update(_jobs)
    .where(*FENCE)
    .values(lease_expires_at=db_now(seconds_param("b_lease_seconds")))
    .returning(_jobs.c.cancel_requested_at)
)


def checkpoint(session: Session, job: registry.RunningJob, *, lease_seconds: float) -> None:
    """Commit the handler's work so far, with a renewed lease, only while the claim is held and no
    cancel was asked for.

    Raises:
        ClaimLost: another worker holds the job now; nothing was committed.
        JobCancelled: the job was asked to stop; nothing was committed (the runner rolls back).
    """
    params = {"b_job_id": job.id, "b_token": job.claim_token, "b_lease_seconds": float(lease_seconds)}
    row = session.connection().execute(_CHECKPOINT, params).first()
    if row is None:
        raise errors.ClaimLost(f"job {job.id} was taken over by another worker; its work was not committed")
    if row.cancel_requested_at is not None:
        raise errors.JobCancelled(f"job {job.id} was cancelled")
    session.commit()
