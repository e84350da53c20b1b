"""The per-job session middleware: claim, one fresh session per job, commit or record the failure.

For each message, Dramatiq calls (this middleware comes before TimeLimit, so its ``after_`` hooks run
after TimeLimit's; the process lifecycle is :mod:`worker.lifecycle`'s):

1. ``before_process_message``: claim the job in a short transaction of its own; a message whose job
   is finished, running under a live lease or missing, or that arrives while the database cannot be
   reached, is skipped (``SkipMessage``: acked, the row untouched). Then open the job's session.
2. the actor, which calls :func:`run_current_job`: the kind's handler with that session.
3. ``after_process_message``: on success, mark the job ``succeeded`` in the handler's transaction,
   fenced on the claim token, and commit; on failure (any ``BaseException``, Dramatiq's
   ``TimeLimitExceeded`` included), roll back, close, and record the failure in a fresh session;
   a job that was asked to stop (a cancel) is recorded ``cancelled`` instead, however it ended but
   by success (see :mod:`worker.stopping`). A job of a kind with ``max_running`` that ended frees a
   slot: the kind's waiting jobs are sent again.
   ``after_skip_message`` covers a message skipped after the claim. Every path closes the session.

An async kind (``async def handler(session: AsyncSession, job)``) takes the same steps: its claim
is the same, then it gets an ``AsyncSession`` of its own, and the handler, the fenced success with
its commit, and the close run on Dramatiq's event loop thread (the ``AsyncIO`` middleware's,
``EventLoopThread.run_coroutine``: a time limit or shutdown raised in the worker thread cancels the
coroutine). A failure is recorded as for a sync kind, in a fresh (sync) session.

Dramatiq logs and swallows ordinary exceptions raised in hooks, so each hook catches its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import time
import typing
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from dramatiq import Broker, Middleware
from dramatiq.asyncio import EventLoopThread, get_event_loop_thread
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Shutdown, SkipMessage
from dramatiq.threading import Interrupt
from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from jobs import db, errors, registry, store
from jobs.models import AttemptOutcome, JobStatus
from jobs.observe import logs, tracing
from worker import pgbroker
from worker.state import WorkerState
from worker.stopping import Stopper

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How often recording an outcome is tried while the database is unreachable before handing it to
#: the heartbeat (which keeps the job's lease and writes the outcome once the database answers).
RECORD_TRIES = 5
#: First wait between those tries; doubled each time.
RECORD_RETRY_SECONDS = 0.2


@dataclasses.dataclass(slots=True)
class _Current:
    """The job the current worker thread is running."""

    job: registry.RunningJob
    kind: registry.JobKind | None
    #: The one pooled connection of this job: its claim, then its session (None for an async
    #: kind: its claim's connection went back at once, and its AsyncSession has one of its own).
    connection: Connection | None
    session: Session | AsyncSession
    stopper: Stopper
    #: What the handler raised (the actor catches it so Dramatiq does not log it as unhandled).
    error: BaseException | None = None
    ran: bool = False
    #: The job's span (None when tracing is off).
    span: tracing.JobSpan | None = None
    #: How the attempt ended, for the span: an attempt outcome, ``claim_lost`` or ``unrecorded``.
    outcome: str = "unrecorded"


_current: contextvars.ContextVar[_Current | None] = contextvars.ContextVar("jobrunner_current_job", default=None)


def run_current_job() -> None:
    """Run the claimed job of this worker thread with its session (called by the actor).

    An exception from the handler is kept for ``after_process_message`` rather than raised: a
    retry is an outcome, and the middleware logs each outcome once at its own level.
    """
    current = _current.get()
    if current is None:
        raise RuntimeError("no claimed job: the actor must run behind JobSessionMiddleware")
    current.ran = True
    try:
        if current.kind is None:
            raise errors.UnknownJobKind(f"this worker has no job kind {current.job.kind!r}")
        current.job.args = current.kind.parse_args(current.job.args)
        with current.stopper.handling(current.job), tracing.job_step(current.span, "handler"):
            if isinstance(current.session, AsyncSession):
                # On Dramatiq's event loop thread (the AsyncIO middleware's): a time limit, shutdown
                # or cancel raised in this thread cancels the coroutine there (EventLoopThread.run_coroutine).
                handler = typing.cast(registry.AsyncHandler, current.kind.handler)
                _event_loop().run_coroutine(handler(current.session, current.job))
            else:
                typing.cast(registry.Handler, current.kind.handler)(current.session, current.job)
    except BaseException as exc:  # TimeLimitExceeded, Shutdown and JobCancelled are failures too
        current.error = exc


class JobSessionMiddleware(Middleware):
    """Runs each job in a fresh SQLAlchemy session and records its outcome; see the module doc."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self.settings = state.settings
        #: The kinds with ``max_running``, which the claim counts.
        self.limits = state.registry.limited_kinds()

    # --- one message --------------------------------------------------------------------------

    def before_process_message(self, broker: Broker, message: Any) -> None:
        """Runs first for each message: claim the job and open its session, or skip the message.

        One connection serves the claim (committed at once) and then the job's session, so a job
        costs one pool checkout."""
        job_id = _job_id(message)
        claimed: registry.RunningJob | None = message.options.get(pgbroker.CLAIMED)
        if claimed is None:
            claim_started_ns = time.time_ns()
            connection, job = self._connect_and_claim(job_id)
            claim_ended_ns = time.time_ns()
        else:  # the PostgreSQL broker's take claimed it
            claim_started_ns, claim_ended_ns = message.options[pgbroker.CLAIMED_NS]
            connection, job = self._connect(claimed), claimed
        kind = self.state.registry.find(job.kind)
        limit = kind.time_limit_seconds if kind and kind.time_limit_seconds else self.settings.time_limit_seconds
        # TimeLimit (after us in the list) reads the limit from the message; the row's kind decides it.
        message.options["time_limit"] = limit * 1000
        lease_seconds = self.settings.lease_seconds
        stopper = self.state.stopper
        if kind is not None and kind.is_async:
            _close_connection(connection)
            async_session = self.state.require_async_database().sessions()
            job.set_checkpoint_async(
                functools.partial(_checkpoint_async, async_session, job, lease_seconds=lease_seconds)
            )
            session: Session | AsyncSession = async_session
            connection_held: Connection | None = None
        else:
            session = self.state.require_database().sessions(bind=connection)
            job.set_checkpoint(functools.partial(store.checkpoint, session, job, lease_seconds=lease_seconds))
            connection_held = connection
        span = tracing.start_job_span(job, claim_started_ns=claim_started_ns, claim_ended_ns=claim_ended_ns)
        _current.set(
            _Current(job=job, kind=kind, connection=connection_held, session=session, stopper=stopper, span=span)
        )
        fields = {"job_id": str(job.id), "kind": job.kind, "queue": job.queue, "attempt": job.attempt, "run": job.run}
        logs.job_context.set({**fields, "trace_id": span.trace_id} if span is not None else fields)
        self.state.heartbeat.track(job)

    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        """Runs last for each processed message: commit the success or record the failure."""
        current = _current.get()
        if current is None:
            return
        _current.set(None)
        try:
            error = current.error or exception
            if isinstance(error, Shutdown) or (error is None and not current.ran):
                self._interrupt(current, "the worker shut down before the job finished")
            elif error is None:
                self._succeed(current)
            else:
                self._fail(current, error)
        finally:
            self.state.heartbeat.untrack()
            self._wake_waiting(current)
            logs.job_context.set(None)
            if current.span is not None:
                current.span.end(current.outcome)
            # The error's traceback holds the handler's frames (and this record): let them go now,
            # not at the next cyclic garbage collection (as Dramatiq's clear_exception does).
            current.error = None

    def after_skip_message(self, broker: Broker, message: Any) -> None:
        """Runs when a later middleware skipped a message we had claimed: give the job back."""
        current = _current.get()
        if current is None:
            return
        _current.set(None)
        try:
            self._interrupt(current, "the message was skipped before the job ran")
        finally:
            self.state.heartbeat.untrack()
            self._wake_waiting(current)
            logs.job_context.set(None)
            if current.span is not None:
                current.span.end(current.outcome)

    # --- the claim ------------------------------------------------------------------------------

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        """On the PostgreSQL broker, claim as taking (see :mod:`worker.pgbroker`): the jobs of the kinds
        with ``max_running`` are only taken, and claimed here (their claim counts running jobs first)."""
        if isinstance(broker, pgbroker.PostgresBroker):
            broker.claim_as_taking(
                worker_id=self.state.worker_id,
                lease_seconds=self.settings.lease_seconds,
                limited_kinds=self.limits,
                threads=worker.worker_threads,
            )

    def _connect(self, job: registry.RunningJob) -> Connection:
        """A pooled connection for a job claimed already. If none can be had (the database does not
        answer), the job is given back as interrupted once it does (the heartbeat keeps its lease
        until then) and the message is skipped."""
        try:
            return self.state.require_database().engine.connect()
        except sa_exc.SQLAlchemyError as exc:
            _log(
                job.id,
                job.kind,
                "db_unreachable",
                "could not start the job, given back once the database answers: %s",
                exc,
            )
            reason = "the database could not be reached when the job was to start"
            self.state.heartbeat.park(job, lambda session: store.interrupt_job(session, job, reason=reason))
            raise SkipMessage() from None

    def _connect_and_claim(self, job_id: uuid.UUID) -> tuple[Connection, registry.RunningJob]:
        """A pooled connection and the claim made on it; the message is skipped when the database
        cannot be reached (the sweeper re-sends it).

        The worker's pool does not ping a connection at checkout (a round trip per job): a claim
        that finds its connection broken (the server restarted, or dropped it) empties the pool
        and is tried once more on a fresh connection."""
        engine = self.state.require_database().engine
        for last_try in (False, True):
            connection = None
            try:
                connection = engine.connect()
                return connection, self._claim(connection, job_id)
            except sa_exc.DBAPIError as exc:
                _close_connection(connection)
                if exc.connection_invalidated and not last_try:
                    engine.dispose(close=False)  # the other pooled connections died with it
                    continue
                error: sa_exc.SQLAlchemyError = exc
            except sa_exc.SQLAlchemyError as exc:
                _close_connection(connection)
                error = exc
            except BaseException:
                _close_connection(connection)
                raise
            _log(job_id, None, "db_unreachable", "message skipped, the sweeper re-sends it: %s", error)
            raise SkipMessage() from None
        raise AssertionError("unreachable")

    def _claim(self, connection: Connection, job_id: uuid.UUID) -> registry.RunningJob:
        """Claim the job, or raise SkipMessage saying why not."""
        job = self._try_claim(connection, job_id)
        if job is not None:
            return job
        reason, expired = store.describe_unclaimable(connection, job_id)
        connection.rollback()  # end the read, so the job's session starts its own transaction
        if expired:
            # The worker that held it died or stalled: record that attempt as lost, claim afresh.
            with db.session_scope(self.state.require_database().sessions) as session:
                store.recover_lost_jobs(
                    session, job_ids=[job_id], quarantine_after_lost=self.settings.quarantine_after_lost
                )
            job = self._try_claim(connection, job_id)
            if job is not None:
                return job
            reason = "taken by another worker after its lease expired"
        _log(job_id, None, "skipped", "%s", reason)
        raise SkipMessage()

    def _try_claim(self, connection: Connection, job_id: uuid.UUID) -> registry.RunningJob | None:
        """The claim; a job whose kind is at its ``max_running`` stays queued and its message is
        skipped (a job of its kind that ends sends it again: :meth:`_wake_waiting`)."""
        try:
            return store.claim_job(
                connection,
                job_id,
                worker_id=self.state.worker_id,
                lease_seconds=self.settings.lease_seconds,
                limits=self.limits,
            )
        except errors.KindAtLimit as exc:
            _log(job_id, None, "waiting", "%s", exc)
            raise SkipMessage() from None

    # --- outcomes ---------------------------------------------------------------------------------

    def _succeed(self, current: _Current) -> None:
        session = current.session
        try:
            with tracing.job_step(current.span, "commit"):
                if isinstance(session, AsyncSession):
                    # One trip to the event loop: the fenced success, the commit and the close.
                    held = _event_loop().run_coroutine(_complete_async(session, current.job))
                else:
                    held = _complete_sync(session, current.connection, current.job)
        except BaseException as exc:  # the commit failed: that is the job's failure
            _close(current)
            self._fail(current, exc)
            return
        finally:
            if not isinstance(session, AsyncSession):
                _close(current)
        current.outcome = AttemptOutcome.SUCCEEDED if held else "claim_lost"
        if held:
            _log(current.job.id, current.job.kind, "succeeded", "attempt %d", current.job.attempt)
        else:
            self._claim_lost(current.job)

    def _fail(self, current: _Current, error: BaseException) -> None:
        # SQLite: a handler stopped mid-read leaves a statement open on its connection (the error's
        # traceback still holds the cursor), pinning an old snapshot: the next BEGIN IMMEDIATE on
        # that connection would fail with "database is locked". Such a connection is not reused.
        # An async handler cancelled mid-statement (time limit, shutdown) may leave its connection
        # inside a query: it is not reused either.
        cancelled = isinstance(current.session, AsyncSession) and isinstance(error, Interrupt)
        _close(current, discard=self.state.require_database().is_sqlite or cancelled)
        job = current.job
        backoff = self.settings.retry_backoff_seconds
        try:
            with tracing.job_step(current.span, "commit"):
                status = self._record(
                    job,
                    lambda session: (
                        JobStatus.CANCELLED
                        if store.record_cancellation(session, job)
                        else store.record_failure(session, job, error, backoff_seconds=backoff)
                    ),
                )
        except _Unrecorded:
            current.outcome = "unrecorded"
            return
        current.outcome = _FAILURE_OUTCOMES.get(status, "claim_lost")
        if status is JobStatus.CANCELLED:
            _log_cancelled(job)
        elif status is JobStatus.RETRYING:
            _log(
                job.id,
                job.kind,
                "retrying",
                "attempt %d of %d failed: %s: %s",
                job.attempt,
                job.max_attempts,
                type(error).__name__,
                error,
            )
        elif status is JobStatus.FAILED:
            _log(
                job.id,
                job.kind,
                "failed",
                "attempt %d of %d failed for good",
                job.attempt,
                job.max_attempts,
                exc_info=error,
            )
        else:
            self._claim_lost(job)

    def _claim_lost(self, job: registry.RunningJob) -> None:
        """This worker is alive and its job was taken back (it could not renew the lease in time):
        the attempt the sweeper recorded as ``lost`` becomes an ``error``, which does not count
        towards quarantine (:func:`jobs.store.record_worker_alive`)."""
        _log_claim_lost(job)
        worker_id = self.state.worker_id
        with contextlib.suppress(_Unrecorded):
            self._record(job, lambda session: store.record_worker_alive(session, job, worker_id=worker_id))

    def _interrupt(self, current: _Current, reason: str) -> None:
        _close(current)
        job = current.job
        try:
            with tracing.job_step(current.span, "commit"):
                status = self._record(
                    job,
                    lambda session: (
                        JobStatus.CANCELLED
                        if store.record_cancellation(session, job)
                        else (JobStatus.QUEUED if store.interrupt_job(session, job, reason=reason) else None)
                    ),
                )
        except _Unrecorded:
            current.outcome = "unrecorded"
            return
        current.outcome = _INTERRUPT_OUTCOMES.get(status, "claim_lost")
        if status is JobStatus.CANCELLED:
            _log_cancelled(job)
        elif status is JobStatus.QUEUED:
            _log(job.id, job.kind, "interrupted", "back to queued: %s", reason)

    def _wake_waiting(self, current: _Current) -> None:
        """A job of a kind with ``max_running`` ended: send the kind's waiting jobs again."""
        limit = self.limits.get(current.job.kind)
        if limit is None:
            return
        try:
            with db.session_scope(self.state.require_database().sessions) as session:
                store.wake_waiting_jobs(session, current.job.kind, max_running=limit)
        except (sa_exc.SQLAlchemyError, BrokerConnectionError) as exc:
            # The sweeper re-sends them later (REQUEUE_AFTER_SECONDS).
            logger.warning("could not wake the waiting jobs of %s: %s", current.job.kind, exc)

    def _record(self, job: registry.RunningJob, write: Callable[[Session], _T]) -> _T:
        """Run ``write`` in a fresh session and commit, retrying while the database is unreachable.

        Raises:
            _Unrecorded: the database never answered (logged here); the outcome is parked with the
                heartbeat, which writes it once the database answers.
        """
        sessions = self.state.require_database().sessions
        delay = RECORD_RETRY_SECONDS
        for attempt in range(1, RECORD_TRIES + 1):
            try:
                with db.session_scope(sessions) as session:
                    return write(session)
            except (sa_exc.OperationalError, sa_exc.InterfaceError, BrokerConnectionError) as exc:
                if attempt == RECORD_TRIES:
                    _log(
                        job.id,
                        job.kind,
                        "unrecorded",
                        "could not record the outcome (%s); the heartbeat keeps the job's lease and "
                        "writes it once the database answers",
                        exc,
                    )
                    self.state.heartbeat.park(job, write)
                    raise _Unrecorded() from exc
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


#: The attempt outcome :func:`store.record_failure` wrote, by the job's new status.
_FAILURE_OUTCOMES: dict[JobStatus | None, str] = {
    JobStatus.RETRYING: AttemptOutcome.ERROR,
    JobStatus.FAILED: AttemptOutcome.FAILED,
    JobStatus.CANCELLED: AttemptOutcome.CANCELLED,
}


#: The attempt outcome of an interrupted job, by its new status.
_INTERRUPT_OUTCOMES: dict[JobStatus | None, str] = {
    JobStatus.QUEUED: AttemptOutcome.INTERRUPTED,
    JobStatus.CANCELLED: AttemptOutcome.CANCELLED,
}


class _Unrecorded(Exception):
    """An outcome could not be written: the database did not answer (already logged)."""


def _job_id(message: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(message.args[0]))
    except (IndexError, ValueError):
        logger.warning("skipping message %s: it carries no job ID", message.message_id)
        raise SkipMessage() from None


def _close(current: _Current, *, discard: bool = False) -> None:
    """Roll back whatever is open and give the connection back to the pool (or, ``discard``, close
    it for good); safe to call twice."""
    if isinstance(current.session, AsyncSession):
        _event_loop().run_coroutine(_close_async(current.session, discard=discard))
        return
    try:
        current.session.close()
    except Exception:
        logger.warning("closing a job session failed; its connection is discarded", exc_info=True)
        discard = True
    if current.connection is None:
        return
    if discard and not current.connection.invalidated:
        current.connection.invalidate()
    _close_connection(current.connection)


# --- async kinds: the same steps on the AsyncSession, run on Dramatiq's event loop thread ---------


def _event_loop() -> EventLoopThread:
    loop = get_event_loop_thread()
    if loop is None:
        raise RuntimeError("an async job kind needs Dramatiq's AsyncIO middleware (worker.broker adds it)")
    return loop


def _complete_sync(session: Session, connection: Connection | None, job: registry.RunningJob) -> bool:
    """:func:`store.complete_job` in the handler's transaction, then commit (or roll back).

    A handler that left no transaction open (it ran no SQL, or committed its own work) leaves
    nothing for the success to commit with: it then runs on the job's connection alone, without
    the ORM's transaction (on PostgreSQL one round trip in autocommit mode)."""
    if connection is not None and not session.in_transaction() and not connection.in_transaction():
        held = store.complete_job(connection, job)
        if connection.in_transaction():  # SQLite: the success ran in a transaction of its own
            if held:
                connection.commit()
            else:
                connection.rollback()
        return held
    held = store.complete_job(session.connection(), job)
    if held:
        session.commit()
    else:
        session.rollback()
    return held


def _complete_in(session: Session, job: registry.RunningJob) -> bool:
    return store.complete_job(session.connection(), job)


async def _complete_async(session: AsyncSession, job: registry.RunningJob) -> bool:
    """:func:`store.complete_job` in the handler's transaction, then commit (or roll back), and
    close the session if that went through (on an error the caller closes it, discarding if need be)."""
    held = await session.run_sync(_complete_in, job)
    if held:
        await session.commit()
    else:
        await session.rollback()
    await _close_async(session, discard=False)
    return held


async def _checkpoint_async(session: AsyncSession, job: registry.RunningJob, *, lease_seconds: float) -> None:
    await session.run_sync(store.checkpoint, job, lease_seconds=lease_seconds)


async def _close_async(session: AsyncSession, *, discard: bool) -> None:
    try:
        if discard:
            await session.invalidate()
        else:
            await session.close()
    except Exception:
        logger.warning("closing an async job session failed; its connection is discarded", exc_info=True)
        await session.invalidate()


def _close_connection(connection: Connection | None) -> None:
    if connection is None:
        return
    try:
        connection.close()
    except Exception:
        logger.warning("returning a connection to the pool failed; it is discarded", exc_info=True)
        connection.invalidate()


def _log_cancelled(job: registry.RunningJob) -> None:
    _log(job.id, job.kind, "cancelled", "stopped at attempt %d; its work was rolled back", job.attempt)


def _log_claim_lost(job: registry.RunningJob) -> None:
    _log(
        job.id,
        job.kind,
        "claim_lost",
        "another worker took this job over (lease expired); this attempt's work was discarded",
    )


#: The level each outcome is logged at: the routine ones quietly, a final failure as an error.
_LEVELS = {
    "succeeded": logging.DEBUG,
    "skipped": logging.INFO,
    "retrying": logging.INFO,
    "interrupted": logging.INFO,
    "interrupting": logging.INFO,
    "waiting": logging.INFO,
    "stopping": logging.INFO,
    "cancelled": logging.INFO,
    "db_unreachable": logging.WARNING,
    "claim_lost": logging.WARNING,
    "failed": logging.ERROR,
    "unrecorded": logging.WARNING,
}


def _log(job_id: uuid.UUID, kind: str | None, action: str, msg: str, *args: Any, exc_info: Any = None) -> None:
    """Log one job outcome at the level :data:`_LEVELS` gives it."""
    level = _LEVELS[action]
    if not logger.isEnabledFor(level):  # a success is logged at DEBUG: usually not at all
        return
    logger.log(
        level,
        f"job %s (%s) {action}: {msg}",
        job_id,
        kind,
        *args,
        exc_info=exc_info,
        extra={"job_id": str(job_id), "kind": kind, "action": action},
    )
