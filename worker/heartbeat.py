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
        database = self._database
        if database is None:
            return 0
        if self._worker_id is not None:
            self._write_beat(database, self._worker_id)
        tokens = [job.claim_token for job in self.running().values()]
        if not tokens:
            return 0
        with database.engine.begin() as conn:
            return store.renew_leases(conn, tokens, lease_seconds=self.lease_seconds)

    @staticmethod
    def _write_beat(database: db.Database, worker_id: str) -> None:
        # On PostgreSQL one statement in autocommit mode: one round trip, and no connection ever
        # seen idle in a transaction between it and its COMMIT.
        with database.engine.connect() as conn:
            if database.is_sqlite:
                with conn.begin():
                    beats.record_beat(conn, worker_id, now=store.utcnow())
            else:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                beats.record_beat(conn, worker_id, now=store.utcnow())
