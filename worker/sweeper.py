"""The sweeper: what makes "the database is the source of truth" true.

Every pass (one at a time across all workers): take back ``running`` jobs whose lease expired (their
worker died), send again the ``queued`` or ``retrying`` jobs whose message seems lost (a failed
send, a flushed or failed-over Redis; not with the PostgreSQL broker, whose queue is the rows), and
make ``queued`` (and send) the delayed jobs overdue for the same reason. It runs inside every worker
process and as ``jobctl sweep``; in a worker it also applies the retention settings
(:mod:`jobs.retention`) once a minute.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence

from jobs import db, retention, sending, store
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
    #: Expired leases extended instead of taken back (a grace pass, see :func:`sweep_once`).
    extended: list[uuid.UUID] = dataclasses.field(default_factory=list)


def sweep_once(
    database: db.Database, settings: Settings, *, held: sending.HeldProbe | None = None, grace: bool = False
) -> SweepReport:
    """Run one pass in one transaction; the messages go out after it commits.

    ``held``: asks the broker which overdue jobs' messages it still holds, so those are not sent
    again (see :func:`jobs.store.resend_overdue_jobs`); a probe that fails counts as "none held".
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
        if not settings.broker_is_database:  # the PostgreSQL broker's queue is the rows: nothing to re-send
            report.resent = store.resend_overdue_jobs(
                session,
                older_than_seconds=settings.requeue_after_seconds,
                held=None if held is None else _forgiving(held),
                trust_held_for_seconds=settings.resend_held_after_seconds,
            )
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
    if report.extended:
        logger.warning(
            "the database was out of reach for longer than a lease: %d expired lease(s) extended once, not taken back",
            len(report.extended),
        )
    return report


def _forgiving(held: sending.HeldProbe) -> sending.HeldProbe:
    """``held``, answering "none held" (so everything overdue is sent again) when the broker cannot
    be asked: a lost message must never wait on a failing probe."""

    def probe(messages: Sequence[sending.JobMessage]) -> set[uuid.UUID]:
        try:
            return held(messages)
        except Exception:
            logger.warning(
                "could not ask the broker which messages it holds; sending all overdue jobs again", exc_info=True
            )
            return set()

    return probe


class _Sweeps:
    """The worker's sweeper passes, each a grace pass when the one before it that reached the
    database is more than a lease (plus an interval) ago; and the retention
    (:func:`jobs.retention.prune_expired`) every ``retention.INTERVAL_SECONDS``."""

    def __init__(self, database: db.Database, settings: Settings, held: sending.HeldProbe | None) -> None:
        self.database = database
        self.settings = settings
        self.held = held
        self._reached_at = time.monotonic()
        self._pruned_at = time.monotonic() - retention.INTERVAL_SECONDS  # the first pass prunes too

    def run(self) -> SweepReport:
        out_of_reach = time.monotonic() - self._reached_at
        grace = out_of_reach > self.settings.lease_seconds + self.settings.sweep_interval_seconds
        report = sweep_once(self.database, self.settings, held=self.held, grace=grace)
        self._reached_at = time.monotonic()
        if time.monotonic() - self._pruned_at >= retention.INTERVAL_SECONDS:
            self._pruned_at = time.monotonic()
            prune(self.database, self.settings)
        return report


def make_sweeper(
    database: db.Database, settings: Settings, *, held: sending.HeldProbe | None = None
) -> periodic.Periodic:
    """A thread running the sweeper passes every ``sweep_interval_seconds`` (a grace pass after the
    database was out of reach for longer than a lease) and the retention (see :class:`_Sweeps`)."""
    return periodic.Periodic("sweeper", settings.sweep_interval_seconds, _Sweeps(database, settings, held).run)


def prune(database: db.Database, settings: Settings) -> int:
    """Delete the finished jobs the retention settings no longer keep (a bounded number per call)."""
    deleted = retention.prune_expired(
        database, retention.Retention(succeeded=settings.retain_succeeded, failed=settings.retain_failed)
    )
    if deleted:
        logger.info("deleted %d finished job(s) past their retention", deleted, extra={"action": "pruned"})
    return deleted
