"""The sweeper: what makes "the database is the source of truth" true.

Every pass (one at a time across all workers): take back ``running`` jobs whose lease expired (their
worker died), and send again the ``queued`` or ``retrying`` jobs whose message seems lost (a failed
send, a flushed or failed-over Redis). It runs inside every worker process and as ``jobctl sweep``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid

from sqlalchemy import exc as sa_exc

from jobs import db, store
from jobs.config import Settings
from jobs.models import JobStatus

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SweepReport:
    """What one pass did; ``ran`` is False when another pass held the lock."""

    ran: bool
    requeued: list[uuid.UUID] = dataclasses.field(default_factory=list)
    quarantined: list[uuid.UUID] = dataclasses.field(default_factory=list)
    resent: list[uuid.UUID] = dataclasses.field(default_factory=list)


def sweep_once(database: db.Database, settings: Settings) -> SweepReport:
    """Run one pass in one transaction; the messages go out after it commits."""
    with db.session_scope(database.sessions) as session:
        if not store.try_sweep_lock(session):
            return SweepReport(ran=False)
        recovered = store.recover_lost_jobs(session, quarantine_after_lost=settings.quarantine_after_lost)
        report = SweepReport(
            ran=True,
            requeued=[job_id for job_id, status in recovered if status == JobStatus.QUEUED],
            quarantined=[job_id for job_id, status in recovered if status == JobStatus.FAILED],
        )
        report.resent = store.resend_overdue_jobs(session, older_than_seconds=settings.requeue_after_seconds)
    for job_id in report.requeued:
        logger.info("job %s lost its worker; queued again", job_id, extra={"job_id": str(job_id), "action": "requeued"})
    for job_id in report.quarantined:
        logger.error("job %s failed: its worker died too often", job_id, extra={"job_id": str(job_id), "action": "quarantined"})
    if report.resent:
        logger.info("re-sent %d job(s) whose message seemed lost", len(report.resent))
    return report


class Sweeper:
    """Runs :func:`sweep_once` every ``sweep_interval_seconds`` on a daemon thread."""

    def __init__(self, database: db.Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobrunner-sweeper", daemon=True)

    def start(self) -> None:
        """Start sweeping."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.settings.sweep_interval_seconds):
            try:
                sweep_once(self.database, self.settings)
            except sa_exc.SQLAlchemyError as exc:
                logger.warning("sweep failed (will try again): %s", exc)
