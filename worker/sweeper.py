"""The sweeper: what makes "the database is the source of truth" true.

Every pass (one at a time across all workers): take back ``running`` jobs whose lease expired (their
worker died), and send again the ``queued`` or ``retrying`` jobs whose message seems lost (a failed
send, a flushed or failed-over Redis; not with the PostgreSQL broker, whose queue is the rows). It
runs inside every worker process and as ``jobctl sweep``.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

from jobs import db, store
from jobs.config import Settings
from jobs.models import JobStatus
from worker import periodic

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
        if not settings.broker_is_database:  # the PostgreSQL broker's queue is the rows: nothing to re-send
            report.resent = store.resend_overdue_jobs(session, older_than_seconds=settings.requeue_after_seconds)
    for job_id in report.requeued:
        logger.info("job %s lost its worker; queued again", job_id, extra={"job_id": str(job_id), "action": "requeued"})
    for job_id in report.quarantined:
        logger.error(
            "job %s failed: its worker died too often", job_id, extra={"job_id": str(job_id), "action": "quarantined"}
        )
    if report.resent:
        logger.info("re-sent %d job(s) whose message seemed lost", len(report.resent))
    return report


def make_sweeper(database: db.Database, settings: Settings) -> periodic.Periodic:
    """A thread running :func:`sweep_once` every ``sweep_interval_seconds``."""
    return periodic.Periodic("sweeper", settings.sweep_interval_seconds, lambda: sweep_once(database, settings))
