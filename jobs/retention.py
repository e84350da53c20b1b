"""Automatic retention: delete finished jobs (and their history) older than the settings say.

The sweeper calls :func:`prune_expired` (at most every :data:`INTERVAL_SECONDS` per worker process);
``jobctl prune`` stays for manual use. Each batch is a short transaction of its own (one
:func:`jobs.store.prune_jobs` call), so no lock is held for long; on PostgreSQL a batch runs only
under the sweeper's advisory lock, so two workers never delete the same rows at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import delete

from jobs import db, store
from jobs.models import JobStatus
from jobs.scheduling import models as schedule_models
from jobs.store.clock import database_time

#: How often each worker process prunes (the sweeper runs more often; pruning need not).
INTERVAL_SECONDS = 60.0
#: Jobs deleted per transaction.
BATCH_SIZE = 500
#: Batches per call at most, so one call never runs long; the next call goes on.
MAX_BATCHES = 20


@dataclasses.dataclass(frozen=True, slots=True)
class Retention:
    """How long finished jobs are kept, by how they ended."""

    succeeded: dt.timedelta
    failed: dt.timedelta

    def plan(self, now: dt.datetime) -> list[tuple[list[JobStatus], dt.datetime]]:
        """The statuses to prune and the finish time before which each goes."""
        return [
            ([JobStatus.SUCCEEDED, JobStatus.CANCELLED], now - self.succeeded),
            ([JobStatus.FAILED], now - self.failed),
        ]


def prune_expired(
    database: db.Database, retention: Retention, *, batch_size: int = BATCH_SIZE, max_batches: int = MAX_BATCHES
) -> int:
    """Delete up to ``max_batches`` batches of jobs finished longer ago than ``retention`` allows,
    and the schedule fire records as old as the succeeded jobs kept. Returns how many jobs went."""
    with database.engine.connect() as conn:
        now = database_time(conn)  # finished_at is the database's time
    deleted = batches = 0
    for statuses, before in retention.plan(now):
        while batches < max_batches:
            batches += 1
            with db.session_scope(database.sessions) as session:
                if not store.try_sweep_lock(session):
                    return deleted
                batch = store.prune_jobs(session, statuses=statuses, older_than=before, batch_size=batch_size)
            deleted += batch
            if batch < batch_size:
                break
    fires = schedule_models.ScheduleFire.__table__
    with db.session_scope(database.sessions) as session:
        # The fire records only guard fire times still to come; old ones keep nothing from happening.
        session.execute(delete(fires).where(fires.c.created_at < now - retention.succeeded))
    return deleted
