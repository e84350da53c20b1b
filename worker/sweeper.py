"""The sweeper: what makes "the database is the source of truth" true.

Every pass (one at a time across all workers): take back ``running`` jobs whose lease expired (their
worker died), send again the ``queued`` or ``retrying`` jobs whose message seems lost (a failed
send, a flushed or failed-over Redis), and make ``queued`` (and send) the delayed jobs overdue for
the same reason. It runs inside every worker process and as ``jobctl sweep``; in a worker it also
applies the retention settings (:mod:`jobs.retention`) once a minute.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid

from jobs import db, retention, store
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
    #: Delayed jobs whose message seemed lost, made queued and sent again.
    released: list[uuid.UUID] = dataclasses.field(default_factory=list)


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
        report.released = store.release_overdue_scheduled(session, older_than_seconds=settings.requeue_after_seconds)
    for job_id in report.requeued:
        logger.info("job %s lost its worker; queued again", job_id, extra={"job_id": str(job_id), "action": "requeued"})
    for job_id in report.quarantined:
        logger.error(
            "job %s failed: its worker died too often", job_id, extra={"job_id": str(job_id), "action": "quarantined"}
        )
    if report.resent:
        logger.info("re-sent %d job(s) whose message seemed lost", len(report.resent))
    if report.released:
        logger.info("queued %d delayed job(s) whose message seemed lost", len(report.released))
    return report


def make_sweeper(database: db.Database, settings: Settings) -> periodic.Periodic:
    """A thread running :func:`sweep_once` every ``sweep_interval_seconds``, and the retention
    (:func:`jobs.retention.prune_expired`) every ``retention.INTERVAL_SECONDS``."""
    pruned_at = [time.monotonic() - retention.INTERVAL_SECONDS]  # the first pass prunes too

    def sweep() -> None:
        sweep_once(database, settings)
        if time.monotonic() - pruned_at[0] >= retention.INTERVAL_SECONDS:
            pruned_at[0] = time.monotonic()
            prune(database, settings)

    return periodic.Periodic("sweeper", settings.sweep_interval_seconds, sweep)


def prune(database: db.Database, settings: Settings) -> int:
    """Delete the finished jobs the retention settings no longer keep (a bounded number per call)."""
    deleted = retention.prune_expired(
        database, retention.Retention(succeeded=settings.retain_succeeded, failed=settings.retain_failed)
    )
    if deleted:
        logger.info("deleted %d finished job(s) past their retention", deleted, extra={"action": "pruned"})
    return deleted
