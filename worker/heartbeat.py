"""The jobs a worker process is running, and its one heartbeat thread renewing all their leases."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

from dramatiq.errors import BrokerConnectionError
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from jobs import db, registry, store
from jobs.observe import beats
from worker import periodic

logger = logging.getLogger(__name__)

#: Writes a job's outcome in the session it is given (committed by the caller).
OutcomeWrite = Callable[[Session], object]


class Heartbeat:
    """Tracks the job each worker thread runs and, once started, renews every third of a lease the
    leases of all of them in one statement. A job whose lease is not renewed (its process died or
    hung) can be taken back by the sweeper.

    A job that ended while the database could not be reached is *parked* (:meth:`park`): its lease
    is renewed with the others and its outcome written at each beat until that goes through, so
    an outage, however long, is not taken for the death of a worker that is alive."""

    def __init__(self, *, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._jobs: dict[int, registry.RunningJob] = {}
        self._parked: dict[uuid.UUID, tuple[registry.RunningJob, OutcomeWrite]] = {}
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
        """Stop beating and wait for the thread; then try once more to write the parked outcomes
        (those still unwritten are taken back by a sweeper when their lease expires)."""
        self._thread.stop()
        if self._database is not None and self.parked():
            self._write_parked(self._database)
            if self.parked():
                logger.warning("%d job outcome(s) left unwritten at shutdown", len(self.parked()))

    def track(self, job: registry.RunningJob) -> None:
        """Renew ``job``'s lease, run by the calling thread, until :meth:`untrack`."""
        with self._lock:
            self._jobs[threading.get_ident()] = job

    def untrack(self) -> None:
        """Stop renewing the lease of the calling thread's job."""
        with self._lock:
            self._jobs.pop(threading.get_ident(), None)

    def park(self, job: registry.RunningJob, write: OutcomeWrite) -> None:
        """Keep ``job``'s lease and write its outcome with ``write`` (in a fresh session) at the next
        beats, until that goes through: it ended while the database could not be reached."""
        with self._lock:
            self._parked[job.claim_token] = (job, write)

    def parked(self) -> list[registry.RunningJob]:
        """The ended jobs whose outcome is still to be written."""
        with self._lock:
            return [job for job, _write in self._parked.values()]

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
        tokens = [job.claim_token for job in [*self.running().values(), *self.parked()]]
        if not tokens:
            return 0
        with database.engine.begin() as conn:
            held = store.renew_leases(conn, tokens, lease_seconds=self.lease_seconds)
        self._write_parked(database)
        return held

    def _write_parked(self, database: db.Database) -> None:
        """Write the parked outcomes; a database or broker error stops here, for the next beat (it is
        logged, not raised: the heartbeat thread must go on renewing leases)."""
        with self._lock:
            parked = list(self._parked.items())
        for token, (job, write) in parked:
            try:
                with db.session_scope(database.sessions) as session:
                    write(session)
            except (sa_exc.SQLAlchemyError, BrokerConnectionError) as exc:
                logger.warning("%d parked job outcome(s) still unwritten (will try again): %s", len(parked), exc)
                return
            except Exception:  # not the outage: the lease expires and a sweeper takes the job back
                logger.exception("job %s (%s): its outcome could not be written; dropped", job.id, job.kind)
            else:
                logger.info(
                    "job %s (%s): outcome of attempt %d written now that the database answers",
                    job.id,
                    job.kind,
                    job.attempt,
                    extra={"job_id": str(job.id), "kind": job.kind, "action": "recorded_late"},
                )
            with self._lock:
                self._parked.pop(token, None)

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
