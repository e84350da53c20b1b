"""One heartbeat thread per worker process: renews the leases of all the jobs it runs."""

from __future__ import annotations

import logging
import threading
import uuid

from sqlalchemy import exc as sa_exc

from jobs import db, registry, store

logger = logging.getLogger(__name__)


class Heartbeat:
    """Renews, every third of a lease, the leases of the jobs this process is running, in one
    statement. A job whose lease was not renewed (the process died or hung) can be taken back."""

    def __init__(self, database: db.Database, *, lease_seconds: float) -> None:
        self.database = database
        self.lease_seconds = lease_seconds
        self._tokens: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobrunner-heartbeat", daemon=True)

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for the thread."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def track(self, job: registry.RunningJob) -> None:
        """Renew ``job``'s lease until :meth:`untrack`."""
        with self._lock:
            self._tokens.add(job.claim_token)

    def untrack(self, job: registry.RunningJob) -> None:
        """Stop renewing ``job``'s lease."""
        with self._lock:
            self._tokens.discard(job.claim_token)

    def beat(self) -> int:
        """Renew every tracked lease now; returns how many rows were renewed."""
        with self._lock:
            tokens = list(self._tokens)
        if not tokens:
            return 0
        with self.database.engine.begin() as conn:
            return store.renew_leases(conn, tokens, lease_seconds=self.lease_seconds)

    def _run(self) -> None:
        while not self._stopped.wait(self.lease_seconds / 3):
            try:
                self.beat()
            except sa_exc.SQLAlchemyError as exc:
                logger.warning("could not renew leases (will try again): %s", exc)
