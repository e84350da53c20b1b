"""Test helpers for a service's own tests: run the jobs a test enqueued in this process, against the
service's real database, through the worker's own middleware (claim, a fresh session per job, the
success or failure record), with neither Redis nor worker processes.

::

    registry = jobs.load_registry(settings, ["myservice.kinds"])
    with InProcessJobs(settings, registry) as runner:
        jobs.install(SessionLocal, registry=registry, sender=runner.sender)
        ...                                  # call your routes: they enqueue and commit
        assert [j.kind for j in runner.enqueued_jobs()] == ["invoice.send"]
        runner.run_enqueued()                # runs them (and the retries they cause) to the end
        assert runner.enqueued_jobs(kind="invoice.send")[0].status == "succeeded"

The broker is Dramatiq's ``StubBroker`` with the worker's middleware (Dramatiq's AsyncIO when there
are async kinds, the session middleware, TimeLimit) and the worker's actors; only the process
lifecycle (heartbeat, sweeper, graceful shutdown) is left out. Retries wait their backoff: set
``JOBRUNNER_RETRY_BACKOFF_SECONDS`` low in tests.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import TimeLimit

from jobs import db, models, sending
from jobs.config import Settings
from jobs.registry import Registry
from worker import actors, broker, producer
from worker.state import WorkerState

#: Longest :meth:`InProcessJobs.run_enqueued` waits for the queues to empty.
RUN_TIMEOUT_MS = 60_000

#: The one TimeLimit timer thread of this process (see :func:`boot_in_process`).
_timer: Any = None
_timer_lock = threading.Lock()


def boot_in_process(broker: dramatiq.Broker) -> None:
    """What Dramatiq's CLI emits in a worker process at its start (``after_process_boot``), for a
    worker run inside a process that runs many (a test suite): TimeLimit starts its timer thread
    there, a thread Dramatiq never stops. Every broker booted here shares one timer thread instead
    (its deadlines are per worker thread), so a test suite does not leave a thread behind per worker."""
    global _timer
    for middleware in broker.middleware:
        if isinstance(middleware, TimeLimit):
            with _timer_lock:
                if _timer is None:
                    _timer = middleware.manager
                    _timer.start()
            middleware.manager = _timer
        else:
            middleware.after_process_boot(broker)


class InProcessJobs:
    """An in-process worker over Dramatiq's ``StubBroker`` for tests; see the module doc."""

    def __init__(self, settings: Settings, registry: Registry, *, worker_threads: int = 2) -> None:
        self.settings = settings
        self.registry = registry
        self.worker_threads = worker_threads
        self._sent: list[uuid.UUID] = []
        self._pending: list[sending.JobMessage] = []
        self._lock = threading.Lock()
        self.broker = StubBroker(middleware=[])
        self.database = db.make_database(
            settings.database_url, pool_size=worker_threads + 2, sender=self.sender, registry=registry
        )
        self.state = WorkerState(settings=settings, registry=registry, database=self.database)
        for middleware in [*broker.event_loop_middleware(registry), *broker.job_middleware(self.state)]:
            self.broker.add_middleware(middleware)
        actors.declare_actors(self.broker, registry.queues())
        self._worker: dramatiq.Worker | None = None

    def sender(self, messages: Sequence[sending.JobMessage]) -> None:
        """A :data:`jobs.Sender`: records each job's message; :meth:`run_enqueued` runs them."""
        with self._lock:
            self._sent.extend(message.job_id for message in messages)
            self._pending.extend(messages)

    def start(self) -> None:
        """Start the worker threads (and the event loop thread when there are async kinds)."""
        if self.registry.has_async_kinds():
            self.state.async_database = db.make_async_database(
                self.settings.database_url,
                pool_size=self.worker_threads + 2,
                sender=self.sender,
                registry=self.registry,
            )
        boot_in_process(self.broker)  # TimeLimit's timer thread
        self._worker = dramatiq.Worker(self.broker, worker_threads=self.worker_threads, worker_timeout=10)
        self._worker.start()  # AsyncIO starts its loop in before_worker_boot

    def run_enqueued(self, *, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
        """Run every job sent so far, and those they send (retries, jobs they create), to the end.
        Until then, enqueued jobs stay ``queued``.

        Raises:
            dramatiq.errors.QueueJoinTimeout: the queues did not empty within ``timeout_ms``.
        """
        if self._worker is None:
            raise RuntimeError("start() the runner first")
        while True:
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending:
                return
            for message in pending:
                self.broker.enqueue(producer.to_message(message), delay=message.delay_ms)
            for queue in sorted(self.broker.get_declared_queues()):
                self.broker.join(queue, timeout=timeout_ms)
            self._worker.join()

    def enqueued_jobs(self, *, kind: str | None = None) -> list[models.Job]:
        """The jobs whose IDs were sent (after their commit) since the start, first sent first, as
        they are now in the database; ``kind``: only those of that kind. Retries are not repeated."""
        with self._lock:
            sent = list(dict.fromkeys(self._sent))
        with self.database.readers() as session:
            found = {job.id: job for job in (session.get(models.Job, job_id) for job_id in sent) if job is not None}
        return [found[job_id] for job_id in sent if job_id in found and (kind is None or found[job_id].kind == kind)]

    def stop(self) -> None:
        """Stop the worker, close both pools."""
        loop = get_event_loop_thread()
        if self.state.async_database is not None and loop is not None:
            loop.run_coroutine(self.state.async_database.dispose())
            self.state.async_database = None
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self.broker.close()
        self.database.dispose()

    def __enter__(self) -> InProcessJobs:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
