"""PostgreSQL as the broker (``JOBRUNNER_BROKER_URL=postgresql://...``, the jobs database): a Dramatiq
broker of jobrunner's own whose queue is the ``jobs`` table itself.

Nothing but the row carries a job: sending a job is a ``NOTIFY`` (channel ``jobrunner_jobs``,
payload the queue's name) issued in the transaction that created or re-queued it, so it wakes the
consumers exactly when the row commits (and never if it rolls back). A consumer (one per queue and
worker process) ``LISTEN``\\s on its own connection, and when woken, or at the latest every
:data:`POLL_SECONDS`, or when a delayed job falls due, takes a batch of waiting jobs (see
:mod:`jobs.store.taking`: ``FOR UPDATE SKIP LOCKED``, oldest first, marked ``taken_until``) and hands
Dramatiq one message per job ID. The worker machinery is Dramatiq's own (threads, prefetch, time
limits, middleware); the claim in :class:`worker.middleware.JobSessionMiddleware` is the ack.

A worker claims as it takes (:meth:`PostgresBroker.claim_as_taking`, called at worker boot): the
take statement makes the batch ``running`` under this worker's claim tokens
(:func:`jobs.store.take_and_claim_jobs`) and each message carries its claimed job (:data:`CLAIMED`),
so a job costs no claim statement of its own (a job of a kind with ``max_running`` is only taken, and
claimed by the middleware, which counts the kind's running jobs first). Such a worker takes only as
many jobs as it has threads not busy with a taken one (the process's :class:`ClaimSlots`, shared by
its consumers), so a job it claims starts at once, as after a claim of its own; the jobs it holds
unstarted when it stops are unclaimed (:func:`jobs.store.unclaim_jobs`).

Guarantees, and what they rest on:
- A job is never lost: the row stays ``queued``/``retrying`` until a claim commits; a job taken by a
  consumer that died (``kill -9``) or lost its connection is taken again once ``taken_until``
  (``lease_seconds`` after the take) passes. A missed ``NOTIFY`` costs at most ``POLL_SECONDS``.
- Never run twice: the claim is one fenced UPDATE, whatever delivered the message twice.
- A retry's backoff holds: a job whose ``next_retry_at`` is ahead is not taken; an idle consumer
  sleeps until the soonest such time.
- Needs the jobs database to be PostgreSQL, and the URL to name it (``jobs.config`` checks both).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import dramatiq
import psycopg
from dramatiq import Message, MessageProxy
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout, QueueNotFound
from psycopg import sql
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from jobs import db, registry, sending, store
from jobs.config import Settings

logger = logging.getLogger(__name__)

#: Longest an idle consumer goes without looking at the table (a NOTIFY missed: only with a dropped
#: connection, since PostgreSQL delivers every committed one to every listener).
POLL_SECONDS = 1.0
#: Longest a consumer that holds jobs waits for more of its slots to free up before it takes again
#: while jobs wait (see :meth:`PostgresConsumer._wait`).
TAKE_WAIT_SECONDS = 0.005
#: How often ``join`` (tests) looks at the table.
JOIN_POLL_SECONDS = 0.02
#: What a health check, a send or a consumer raises when PostgreSQL does not answer.
UNREACHABLE = (sa_exc.SQLAlchemyError,)
#: The message option holding the job a take claimed (a :class:`jobs.registry.RunningJob`), and the
#: take's start and end (``time.time_ns()``) for the job's claim span.
CLAIMED = "jobrunner_claimed"
CLAIMED_NS = "jobrunner_claimed_ns"


class ClaimSlots:
    """A worker process's takes that claim: who claims, for how long, which kinds are only taken
    (``limited_kinds``), and one slot per worker thread, shared by the process's consumers (one per
    queue), so the jobs taken and not yet done never outnumber the threads."""

    def __init__(self, *, worker_id: str, lease_seconds: float, limited_kinds: Iterable[str], threads: int) -> None:
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.limited_kinds = frozenset(limited_kinds)
        self.threads = threads
        self._held: set[str] = set()
        #: Slots set aside for a take under way (its jobs are claimed before they are held).
        self._reserved = 0
        #: Counts every reserve, hold and release: unchanged across two looks, nothing moved between.
        self.changes = 0
        self._lock = threading.Lock()
        self._freed: list[threading.Event] = []

    def free(self) -> int:
        with self._lock:
            return self.threads - len(self._held) - self._reserved

    def in_flight(self) -> int:
        """Jobs taken (or being taken) and not yet done."""
        with self._lock:
            return len(self._held) + self._reserved

    @contextlib.contextmanager
    def reserving(self, slots: int) -> Iterator[None]:
        """Set ``slots`` aside while a take runs: the jobs it claims count from the moment the
        statement commits, before :meth:`hold` (called inside the block) holds them."""
        with self._lock:
            self._reserved += slots
            self.changes += 1
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= slots
                self.changes += 1

    def hold(self, job_id: str) -> None:
        with self._lock:
            self._held.add(job_id)
            self.changes += 1

    def release(self, job_id: str) -> None:
        """A taken job is done (acked, or given back): wake every consumer waiting for a slot."""
        with self._lock:
            if job_id not in self._held:
                return
            self._held.discard(job_id)
            self.changes += 1
            freed = list(self._freed)
        for event in freed:
            event.set()

    def on_free(self, event: threading.Event) -> None:
        """Set ``event`` whenever a slot frees up."""
        with self._lock:
            self._freed.append(event)

    def forget(self, event: threading.Event) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._freed.remove(event)


class PostgresBroker(dramatiq.Broker):
    """A Dramatiq broker on the ``jobs`` table of the PostgreSQL database at ``url``.

    ``take_seconds``: how long a taken job stays with its consumer before another may take it (the
    worker's lease). ``actor_name``: the actor a queue's messages go to.
    """

    def __init__(
        self,
        url: str,
        *,
        take_seconds: float,
        actor_name: Callable[[str], str],
        middleware: list[dramatiq.Middleware] | None = None,
    ) -> None:
        super().__init__(middleware=middleware)
        self.url = url
        self.take_seconds = take_seconds
        self.actor_name = actor_name
        #: Set by :meth:`claim_as_taking`: takes claim too.
        self.claims: ClaimSlots | None = None
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        #: Unpooled: each consumer's listening connection is its own, closed with the consumer.
        self.listening_engine = create_engine(
            db.normalize_url(url), poolclass=NullPool, connect_args={"application_name": "jobrunner-broker"}
        )

    @property
    def engine(self) -> Engine:
        """The broker's own pooled engine for short work (built on first use: a worker forks after
        making the broker)."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = db.make_engine(self.url, pool_size=2, application_name="jobrunner-broker")
            return self._engine

    def claim_as_taking(
        self, *, worker_id: str, lease_seconds: float, limited_kinds: Iterable[str], threads: int
    ) -> None:
        """From now on this process's consumers claim the jobs they take for ``worker_id`` (but those
        of ``limited_kinds``), at most ``threads`` jobs at a time (see the module doc); each more
        worker on this broker (tests) adds its threads. Only for a worker whose session middleware
        takes the claimed jobs from the messages (:data:`CLAIMED`)."""
        if self.claims is None:
            self.claims = ClaimSlots(
                worker_id=worker_id, lease_seconds=lease_seconds, limited_kinds=limited_kinds, threads=threads
            )
        else:
            self.claims.threads += threads

    def close(self) -> None:
        """Close the broker's pooled connections."""
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> PostgresConsumer:
        """A consumer of ``queue_name`` holding at most ``prefetch`` unacknowledged jobs, whose
        ``next`` returns None after ``timeout`` ms without one."""
        if queue_name not in self.queues:
            raise QueueNotFound(queue_name)  # type: ignore[no-untyped-call]
        try:
            return PostgresConsumer(self, queue_name, prefetch=prefetch, timeout_ms=timeout)
        except (*UNREACHABLE, psycopg.Error) as exc:
            raise ConnectionClosed(exc) from exc  # type: ignore[no-untyped-call]

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue (a name: the table needs nothing per queue)."""
        if queue_name in self.queues:
            return
        self.emit_before("declare_queue", queue_name)
        self.queues[queue_name] = None
        self.emit_after("declare_queue", queue_name)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Wake the consumers of the message's queue at once (``NOTIFY`` in a transaction of its
        own). The job's row is the message: a delayed job's row carries its ``next_retry_at``."""
        self.emit_before("enqueue", message, delay)
        with self.engine.connect() as conn:
            store.notify_waiting(conn, [message.queue_name])
            conn.commit()
        self.emit_after("enqueue", message, delay)
        return message

    def get_declared_queues(self) -> set[str]:
        return set(self.queues)

    def get_declared_delay_queues(self) -> set[str]:
        return set()

    def flush(self, queue_name: str) -> None:
        """Nothing to drop: the jobs' rows are the queue, and only the store changes them."""

    def flush_all(self) -> None:
        """Nothing to drop (see :meth:`flush`)."""

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        """Wait until no job of ``queue_name`` waits or runs (tests). In a worker that claims as it
        takes: until none waits and this process holds none it took, with nothing taken or done
        between the two looks (a job running elsewhere is not waited for).

        Raises:
            QueueJoinTimeout: still some after ``timeout`` ms.
        """
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            claims = self.claims
            changes = None if claims is None else claims.changes
            with self.engine.connect() as conn:
                if claims is None and store.count_unfinished(conn, queue_name) == 0:
                    return
                if (
                    claims is not None
                    and store.count_unfinished(conn, queue_name, running=False) == 0
                    and claims.in_flight() == 0
                    and claims.changes == changes
                ):
                    return
            if deadline is not None and time.monotonic() > deadline:
                raise QueueJoinTimeout(queue_name)  # type: ignore[no-untyped-call]
            time.sleep(JOIN_POLL_SECONDS)


class PostgresConsumer(dramatiq.Consumer):
    """Takes one queue's waiting jobs, woken by ``NOTIFY``; see the module doc.

    Dramatiq calls ``next`` (and ``requeue`` at shutdown) from the consumer thread, ``ack`` and
    ``nack`` from worker threads: those only count the job as done, under a lock.
    """

    def __init__(self, broker: PostgresBroker, queue_name: str, *, prefetch: int, timeout_ms: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(prefetch, 1)
        capacity = self.prefetch if broker.claims is None else min(self.prefetch, broker.claims.threads)
        #: Free slots worth a take of their own while jobs wait: refilling each slot as its job is
        #: acked would cost one statement (and round trip) per job.
        self.min_take = max(1, capacity // 4)
        self.timeout_seconds = timeout_ms / 1000
        self._taken: collections.deque[MessageProxy] = collections.deque()
        self._unacked: set[str] = set()
        #: Jobs taken but not claimed by the take (of a kind with ``max_running``) whose messages are
        #: done: released at the next take, so one the claim left waiting (the kind at its limit) can
        #: be taken again at once rather than when ``taken_until`` passes.
        self._to_release: list[uuid.UUID] = []
        self._lock = threading.Lock()
        self._acked = threading.Event()
        #: Take at the next chance: woken by a NOTIFY, or the last take filled its batch.
        self._wake = True
        #: When to look at the table without a wake-up (monotonic seconds).
        self._look_at = 0.0
        self._conn: Connection = broker.listening_engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            self._driver = db.psycopg_connection(self._conn)
            self._driver.execute(sql.SQL("LISTEN {}").format(sql.Identifier(store.taking.CHANNEL)))
        except BaseException:
            self._conn.close()
            raise
        if broker.claims is not None:
            broker.claims.on_free(self._acked)

    def __next__(self) -> MessageProxy | None:
        """The next taken job's message, or None when none came within the timeout."""
        if not self._taken:
            try:
                self._fill()
            except (*UNREACHABLE, psycopg.Error, OSError) as exc:  # psycopg's own: waiting for a NOTIFY
                raise ConnectionClosed(exc) from exc  # type: ignore[no-untyped-call]
        return self._taken.popleft() if self._taken else None

    def ack(self, message: MessageProxy) -> None:
        """The job was claimed (or skipped): a slot is free."""
        self._done(message)

    def nack(self, message: MessageProxy) -> None:
        """As :meth:`ack`: the row, not the message, says what becomes of the job."""
        self._done(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Give unprocessed jobs back at once (the worker stops), on a connection of this call's own:
        a taken job is released, a claimed one unclaimed."""
        messages = list(messages)
        claimed = [message.options[CLAIMED] for message in messages if CLAIMED in message.options]
        job_ids = [uuid.UUID(message.args[0]) for message in messages if CLAIMED not in message.options]
        try:
            with self.broker.engine.connect() as conn:
                store.release_jobs(conn, job_ids)
                store.unclaim_jobs(conn, claimed)
                store.notify_waiting(conn, [self.queue_name] if claimed else [])
                conn.commit()
        except UNREACHABLE:
            logger.warning(
                "could not give back %d taken job(s); they are taken again later (a claimed one when "
                "its lease expires)",
                len(messages),
            )
        for message in messages:
            self._done(message)

    def close(self) -> None:
        """Give back the jobs taken and never handed to Dramatiq, and close the listening connection."""
        leftover = list(self._taken)
        self._taken.clear()
        if leftover:
            self.requeue(leftover)
        if self.broker.claims is not None:
            self.broker.claims.forget(self._acked)
        with contextlib.suppress(*UNREACHABLE):
            self._conn.close()

    # --- taking --------------------------------------------------------------------------------

    def _fill(self) -> None:
        if self._may_take(self.min_take):
            self._take()
        if not self._taken:
            self._wait()
            if self._may_take():
                self._take()

    def _room(self) -> int:
        with self._lock:
            room = self.prefetch - len(self._unacked)
        claims = self.broker.claims
        return room if claims is None else min(room, claims.free())

    def _may_take(self, slots: int = 1) -> bool:
        return self._room() >= slots and (self._wake or time.monotonic() >= self._look_at)

    def _take(self) -> None:
        room = self._room()
        self._wake = False
        with self._lock:
            to_release, self._to_release = self._to_release, []
        store.release_jobs(self._conn, to_release)
        claims = self.broker.claims
        if claims is None:
            job_ids = store.take_jobs(self._conn, self.queue_name, limit=room, take_seconds=self.broker.take_seconds)
            self._hand_out(job_ids, {}, (0, 0))
        else:
            with claims.reserving(room):
                started_ns = time.time_ns()
                claimed = dict(
                    store.take_and_claim_jobs(
                        self._conn,
                        self.queue_name,
                        limit=room,
                        lease_seconds=claims.lease_seconds,
                        worker_id=claims.worker_id,
                        limited_kinds=claims.limited_kinds,
                        take_seconds=self.broker.take_seconds,
                    )
                )
                job_ids = list(claimed)
                self._hand_out(job_ids, claimed, (started_ns, time.time_ns()))
        now = time.monotonic()
        self._look_at = now + POLL_SECONDS
        if len(job_ids) == room:
            self._wake = True  # a full batch: there may be more
        elif not job_ids:
            due = store.next_due_at(self._conn, self.queue_name)
            if due is not None:
                self._look_at = min(self._look_at, now + (due - store.utcnow()).total_seconds())

    def _hand_out(
        self,
        job_ids: list[uuid.UUID],
        claimed: dict[uuid.UUID, registry.RunningJob | None],
        claimed_ns: tuple[int, int],
    ) -> None:
        """Queue a message for each taken job (carrying its claimed job, if the take claimed it)."""
        claims = self.broker.claims
        for job_id in job_ids:
            job = claimed.get(job_id)
            message: Message[Any] = Message(
                queue_name=self.queue_name,
                actor_name=self.broker.actor_name(self.queue_name),
                args=(str(job_id),),
                kwargs={},
                options={} if job is None else {CLAIMED: job, CLAIMED_NS: claimed_ns},
            )
            with self._lock:
                self._unacked.add(str(job_id))
            if claims is not None:
                claims.hold(str(job_id))
            self._taken.append(MessageProxy(message))

    def _wait(self) -> None:
        """Wait up to the timeout for a reason to take: a NOTIFY for this queue, a free slot, or
        the time to look again. While jobs wait (the last take was full, or a NOTIFY came) and
        fewer than ``min_take`` slots are free, wait up to ``TAKE_WAIT_SECONDS`` more for acks,
        so that the next take fills several slots in one statement."""
        if self._room() <= 0:
            self._acked.wait(self.timeout_seconds)
            self._acked.clear()
            if self._room() <= 0:
                return
        if self._wake:
            deadline = time.monotonic() + TAKE_WAIT_SECONDS
            while self._room() < self.min_take and (left := deadline - time.monotonic()) > 0:
                self._acked.wait(left)
                self._acked.clear()
            return
        timeout = min(self.timeout_seconds, max(self._look_at - time.monotonic(), 0.0))
        if timeout <= 0:
            return
        # psycopg 3 keeps notifications that arrive during other statements for the next notifies().
        for notification in self._driver.notifies(timeout=timeout, stop_after=1):
            if notification.payload == self.queue_name:
                self._wake = True

    def _done(self, message: MessageProxy) -> None:
        job_id, claims = message.args[0], self.broker.claims
        with self._lock:
            self._unacked.discard(job_id)
            if claims is not None and CLAIMED not in message.options:
                self._to_release.append(uuid.UUID(job_id))
        if claims is not None:
            claims.release(job_id)
        self._acked.set()


class PostgresSender:
    """Sends job IDs as wake-ups in the transaction that made the jobs (see :mod:`jobs.sending`)."""

    def __init__(self, broker: PostgresBroker) -> None:
        self.broker = broker

    def send_in_transaction(self, connection: Connection, messages: Sequence[sending.JobMessage]) -> None:
        """``NOTIFY`` each queue on the transaction's connection: delivered when it commits."""
        store.notify_waiting(connection, [message.queue for message in messages])

    def __call__(self, messages: Sequence[sending.JobMessage]) -> None:
        """``NOTIFY`` each queue at once (a send outside a session's transaction)."""
        with self.broker.engine.connect() as conn:
            store.notify_waiting(conn, [message.queue for message in messages])
            conn.commit()


def make_broker(settings: Settings, *, actor_name: Callable[[str], str]) -> PostgresBroker:
    """A bare PostgreSQL broker (no middleware, no actors) on ``settings.broker_url``; a job taken
    and not claimed goes back after ``lease_seconds``."""
    return PostgresBroker(settings.broker_url, take_seconds=settings.lease_seconds, actor_name=actor_name)


def check(broker: PostgresBroker) -> None:
    """Run ``SELECT 1`` on the broker's database.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: it did not answer.
    """
    with broker.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
