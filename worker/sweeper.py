"""The sweeper: what makes "the database is the source of truth" true.

Every pass (one at a time across all workers): take back ``running`` jobs whose lease expired (their
worker died), and send again the ``queued`` or ``retrying`` jobs whose message seems lost (a failed
send, a flushed or failed-over Redis). It runs inside every worker process and as ``jobctl sweep``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
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
    #: Expired leases extended instead of taken back (a grace pass, see :func:`sweep_once`).
    extended: list[uuid.UUID] = dataclasses.field(default_factory=list)


def sweep_once(database: db.Database, settings: Settings, *, grace: bool = False) -> SweepReport:
    """Run one pass in one transaction; the messages go out after it commits.

    ``grace``: the caller could not reach the database for longer than a lease before this pass, so
    an expired lease is no proof that its worker died (the worker may have been cut off too): give
    each one more lease (:func:`jobs.store.extend_expired_leases`) rather than take it back.
    """
    with db.session_scope(database.sessions) as session:
        if not store.try_sweep_lock(session):
            return SweepReport(ran=False)
        if grace:
            report = SweepReport(
                ran=True, extended=store.extend_expired_leases(session, lease_seconds=settings.lease_seconds)
            )
        else:
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
        logger.error(
            "job %s failed: its worker died too often", job_id, extra={"job_id": str(job_id), "action": "quarantined"}
        )
    if report.resent:
        logger.info("re-sent %d job(s) whose message seemed lost", len(report.resent))
    if report.extended:
        logger.warning(
            "the database was out of reach for longer than a lease: %d expired lease(s) extended once, not taken back",
            len(report.extended),
        )
    return report


class _Sweeps:
    """The worker's sweeper passes, each a grace pass when the one before it that reached the
    database is more than a lease (plus an interval) ago."""

    def __init__(self, database: db.Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self._reached_at = time.monotonic()

    def run(self) -> SweepReport:
        out_of_reach = time.monotonic() - self._reached_at
        grace = out_of_reach > self.settings.lease_seconds + self.settings.sweep_interval_seconds
        report = sweep_once(self.database, self.settings, grace=grace)
        self._reached_at = time.monotonic()
        return report


def make_sweeper(database: db.Database, settings: Settings) -> periodic.Periodic:
    """A thread running :func:`sweep_once` every ``sweep_interval_seconds`` (a grace pass after the
    database was out of reach for longer than a lease)."""
    return periodic.Periodic("sweeper", settings.sweep_interval_seconds, _Sweeps(database, settings).run)
