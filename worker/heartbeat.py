"""The jobs a worker process is running, and its one heartbeat thread renewing all their leases."""

from __future__ import annotations

import threading

from jobs import db, registry, store
from jobs.observe import beats
from worker import periodic


class Heartbeat:
    """Tracks the job each worker thread runs and, once started, renews every third of a lease the
    leases of all of them in one statement. A job whose lease is not renewed (its process died or
    hung) can be taken back by the sweeper."""

    def __init__(self, *, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._jobs: dict[int, registry.RunningJob] = {}
        self._lock = threading.Lock()
        self._database: db.Database | None = None
        self._worker_id: str | None = None
        self._thread = periodic.Periodic("heartbeat", lease_seconds / 3, self.beat)

    def start(self, database: db.Database, *, worker_id: str | None = None) -> None:
        """Start beating, renewing leases in ``database`` (and writing ``worker_id``'s beat there)."""
        self._database = database
        self._worker_id = worker_id
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for the thread."""
        self._thread.stop()

    def track(self, job: registry.RunningJob) -> None:
        """Renew ``job``'s lease, run by the calling thread, until :meth:`untrack`."""
        with self._lock:
            self._jobs[threading.get_ident()] = job

    def untrack(self) -> None:
        """Stop renewing the lease of the calling thread's job."""
        with self._lock:
            self._jobs.pop(threading.get_ident(), None)

    def running(self) -> dict[int, registry.RunningJob]:
        """The jobs running now, by worker thread ID."""
        with self._lock:
            return dict(self._jobs)

    def beat(self) -> int:
        """Renew every tracked lease now, and write this process's beat (idle or not, so the
        metrics see a live worker); returns how many leases were still held."""
        tokens = [job.claim_token for job in self.running().values()]
        if self._database is None or (not tokens and self._worker_id is None):
            return 0
        with self._database.engine.begin() as conn:
            if self._worker_id is not None:
                beats.record_beat(conn, self._worker_id, now=store.utcnow())
            return store.renew_leases(conn, tokens, lease_seconds=self.lease_seconds) if tokens else 0
