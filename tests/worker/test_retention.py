"""Automatic retention: the sweeper deletes finished jobs older than JOBRUNNER_RETAIN_SUCCEEDED /
JOBRUNNER_RETAIN_FAILED, in small batches, and nothing younger or unfinished."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from jobs import db, models, retention, store
from jobs.config import get_settings
from jobs.models import JobStatus
from tests.worker.test_sweeper import _age, _ago, _finish
from worker import sweeper

DAY = 86400


def test_the_sweeper_prunes_only_what_is_older_than_the_settings(database, settings, make_job, monkeypatch):
    monkeypatch.setenv("JOBRUNNER_RETAIN_SUCCEEDED", "2d")
    monkeypatch.setenv("JOBRUNNER_RETAIN_FAILED", "10d")
    get_settings.cache_clear()
    ages = {
        ("old succeeded", JobStatus.SUCCEEDED, 3 * DAY),
        ("young succeeded", JobStatus.SUCCEEDED, 1 * DAY),
        ("old cancelled", JobStatus.CANCELLED, 3 * DAY),
        ("failed between", JobStatus.FAILED, 3 * DAY),
        ("old failed", JobStatus.FAILED, 11 * DAY),
    }
    ids = {}
    for name, status, age in ages:
        ids[name] = make_job("noop")
        if status == JobStatus.CANCELLED:  # dropped before it started: no attempt
            _age(database, ids[name], status=status, finished_at=_ago(age))
        else:
            _finish(database, ids[name], status, _ago(age))
    ids["queued long ago"] = make_job("noop")
    deleted = sweeper.prune(database, get_settings())
    assert deleted == 3
    with database.readers() as session:
        remaining = set(session.scalars(select(models.Job.id)))
    assert remaining == {ids["young succeeded"], ids["failed between"], ids["queued long ago"]}


def test_retention_goes_in_batches_and_stops_after_its_share(database, make_job):
    job_ids = [make_job("noop") for _ in range(7)]
    for job_id in job_ids:
        _finish(database, job_id, JobStatus.SUCCEEDED, _ago(2 * DAY))
    keep = retention.Retention(succeeded=dt.timedelta(days=1), failed=dt.timedelta(days=1))
    assert retention.prune_expired(database, keep, batch_size=2, max_batches=2) == 4  # two batches of two
    assert retention.prune_expired(database, keep, batch_size=2) == 3  # the rest, next time
    with database.readers() as session:
        assert session.scalar(select(func.count()).select_from(models.Job)) == 0
    with db.session_scope(database.sessions) as session:
        assert store.prune_jobs(session, statuses=[JobStatus.SUCCEEDED], older_than=store.utcnow()) == 0


def test_a_prune_batch_takes_the_oldest_finished_jobs_first(database, make_job):
    # Made in an order unrelated to their finish times: neither insertion order nor the heap gives it.
    ages = [2, 5, 3, 9, 4]
    job_ids = {age: make_job("noop") for age in ages}
    for age, job_id in job_ids.items():
        _finish(database, job_id, JobStatus.SUCCEEDED, _ago(age * DAY))
    with db.session_scope(database.sessions) as session:
        assert store.prune_jobs(session, statuses=[JobStatus.SUCCEEDED], older_than=_ago(DAY), batch_size=2) == 2
    with database.readers() as session:
        remaining = set(session.scalars(select(models.Job.id)))
    assert remaining == {job_ids[2], job_ids[3], job_ids[4]}
