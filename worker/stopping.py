"""Stopping running jobs that were cancelled: a thread per worker process that, every second, asks
the database which of the jobs its handlers are running were asked to stop, and raises
:class:`jobs.errors.JobCancelled` in each of their threads.

It is Dramatiq's own way of interrupting a handler, as its ``TimeLimit`` middleware raises
``TimeLimitExceeded``: ``dramatiq.threading.raise_thread_exception`` (public, in that module's
``__all__``), which sets an asynchronous exception in the thread. So, as there, the exception lands
at the thread's next Python instruction: a handler blocked in a long system call is stopped when
the call returns. A handler that calls ``job.checkpoint()`` is stopped there first, without it.

The exception is raised only while the thread is inside the handler (:meth:`Stopper.handling`),
under a lock the thread takes to leave it, and once per job: it cannot land in the runner's own
code that records the outcome.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator

from dramatiq.threading import raise_thread_exception

from jobs import db, errors, registry, store
from worker import periodic

logger = logging.getLogger(__name__)

#: How often the database is asked about cancel requests, while some handler runs.
POLL_SECONDS = 1.0


class Stopper:
    """Knows which handler each worker thread runs; once started, stops those whose job was
    cancelled (see the module doc)."""

    def __init__(self, *, poll_seconds: float = POLL_SECONDS) -> None:
        self._lock = threading.Lock()
        #: The job of each thread that is inside its handler now.
        self._handling: dict[int, registry.RunningJob] = {}
        #: Claim tokens of the jobs already interrupted (each is, once).
        self._stopped: set[uuid.UUID] = set()
        self._database: db.Database | None = None
        self._thread = periodic.Periodic("stopper", poll_seconds, self.poll)

    def start(self, database: db.Database) -> None:
        """Start polling ``database``."""
        self._database = database
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._thread.stop()

    @contextlib.contextmanager
    def handling(self, job: registry.RunningJob) -> Iterator[None]:
        """Around the handler of ``job`` in the calling thread: only inside it can the job be
        interrupted. A ``JobCancelled`` raised just as the handler returned lands here, inside."""
        thread_id = threading.get_ident()
        with self._lock:
            self._handling[thread_id] = job
        try:
            yield
        finally:
            with self._lock:
                self._handling.pop(thread_id, None)
                self._stopped.discard(job.claim_token)

    def poll(self) -> int:
        """Interrupt the handlers whose job was asked to stop; returns how many."""
        with self._lock:
            running = dict(self._handling)
        if not running or self._database is None:
            return 0
        with self._database.readers() as session:
            asked = store.asked_to_stop(session, {job.id: job.claim_token for job in running.values()})
        stopped = 0
        with self._lock:
            for thread_id, job in self._handling.items():
                if job.claim_token in asked and job.claim_token not in self._stopped:
                    self._stopped.add(job.claim_token)
                    logger.info(
                        "job %s (%s) stopping: it was cancelled",
                        job.id,
                        job.kind,
                        extra={"job_id": str(job.id), "kind": job.kind, "action": "stopping"},
                    )
                    raise_thread_exception(thread_id, errors.JobCancelled)  # type: ignore[no-untyped-call]  # unannotated in dramatiq
                    stopped += 1
        return stopped
