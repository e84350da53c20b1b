"""The worker process's lifecycle, as a Dramatiq middleware: its database, heartbeat, sweeper and
scheduler from boot to shutdown, and the graceful shutdown of the jobs still running.

Per-message work (claim, session, outcome) is :mod:`worker.middleware`'s; this one has only the
worker hooks.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Shutdown
from dramatiq.threading import raise_thread_exception

from jobs import db, sending
from worker import producer, scheduler, sweeper
from worker.periodic import Periodic
from worker.state import WorkerState, worker_id

#: A pooled connection idle longer than this is pinged when checked out; one back sooner (as on a
#: busy worker's per-job path) is used as it is (see ``db.make_engine``).
PING_AFTER_IDLE_SECONDS = 1.0

logger = logging.getLogger(__name__)


class WorkerLifecycle(Middleware):
    """Builds the process's database at boot (its pool sized to the worker's threads), runs the
    heartbeat and the sweeper, and on shutdown gives running jobs ``shutdown_timeout_seconds``
    before interrupting them with Dramatiq's ``Shutdown`` (the session middleware then puts each
    back to ``queued``, attempt ``interrupted``)."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self._owns_database = state.database is None
        self._owns_async_database = state.async_database is None
        self._sweeper: Periodic | None = None
        self._scheduler: scheduler.Scheduler | None = None
        self._shutdown_timer: threading.Timer | None = None

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        """Runs in each worker process before its threads start."""
        state = self.state
        state.worker_id = worker_id()
        if state.database is None:
            state.database = db.make_database(
                state.settings.database_url,
                pool_size=worker.worker_threads + 3,  # and the heartbeat, sweeper and stopper
                sender=producer.make_sender(broker),
                registry=state.registry,
                application_name="jobrunner-worker",
                # No ping per job: the claim replaces a connection found broken (worker.middleware).
                ping_after_idle_seconds=PING_AFTER_IDLE_SECONDS,
            )
        if state.async_database is None and state.registry.has_async_kinds():
            state.async_database = db.make_async_database(
                state.settings.database_url,
                pool_size=worker.worker_threads + 2,
                sender=state.database.sessions.kw["info"][sending.SENDER_KEY],
                registry=state.registry,
                application_name="jobrunner-worker",
            )
        state.heartbeat.start(state.database, worker_id=state.worker_id)
        state.stopper.start(state.database)
        self._sweeper = sweeper.make_sweeper(
            state.database,
            state.settings,
            held=producer.held_probe(broker),
        )
        self._sweeper.start()
        self._scheduler = scheduler.Scheduler(
            state.settings,
            state.registry,
            producer.make_sender(broker),
        )
        self._scheduler.start()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        """Runs when the worker is asked to stop (SIGTERM): start the shutdown timer."""
        if self._sweeper is None:
            return  # never booted
        self._shutdown_timer = threading.Timer(self.state.settings.shutdown_timeout_seconds, self._interrupt_running)
        self._shutdown_timer.daemon = True
        self._shutdown_timer.start()

    def _interrupt_running(self) -> None:
        for thread_id, job in self.state.heartbeat.running().items():
            logger.info(
                "job %s (%s) interrupting: still running at the shutdown timeout",
                job.id,
                job.kind,
                extra={"job_id": str(job.id), "kind": job.kind, "action": "interrupting"},
            )
            raise_thread_exception(thread_id, Shutdown)  # type: ignore[no-untyped-call]  # unannotated in dramatiq

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        """Runs once the worker's threads stopped: stop the timer, sweeper and heartbeat; close the
        pool built at boot."""
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
        if self._sweeper is not None:
            self._sweeper.stop()
        if self._scheduler is not None:
            self._scheduler.stop()
        self.state.heartbeat.stop()
        self.state.stopper.stop()
        if self._owns_database and self.state.database is not None:
            self.state.database.dispose()
        loop = get_event_loop_thread()
        if self._owns_async_database and self.state.async_database is not None and loop is not None:
            # On the loop its connections were opened on; the AsyncIO middleware stops it after us.
            loop.run_coroutine(self.state.async_database.dispose())
            self.state.async_database = None
