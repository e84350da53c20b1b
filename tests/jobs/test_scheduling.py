"""Cron schedules: their timing (croniter and zoneinfo, DST), declaring them in code, and firing
each fire time once, with one catch-up fire after downtime; against the test database."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select

from jobs import db, models
from jobs.config import Settings
from jobs.registry import Registry
from jobs.scheduling import ScheduleSpec, schedule, service
from jobs.scheduling import models as schedule_models
from jobs.scheduling.timing import InvalidSchedule, Timing

UTC = dt.UTC


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_a_cron_time_follows_the_wall_clock_across_dst():
    nightly = Timing(cron="0 3 * * *", timezone="Europe/Paris")
    # 3:00 in Paris is 2:00 UTC in winter and 1:00 UTC in summer (clocks went forward on 29 March 2026).
    assert nightly.next_after(_at("2026-03-28T12:00:00+00:00")) == _at("2026-03-29T01:00:00+00:00")
    assert nightly.next_after(_at("2026-03-27T12:00:00+00:00")) == _at("2026-03-28T02:00:00+00:00")
    assert nightly.latest_until(_at("2026-03-29T01:00:00+00:00")) == _at("2026-03-29T01:00:00+00:00")


def test_a_time_the_dst_change_skips_fires_once_that_night():
    skipped = Timing(cron="30 2 * * *", timezone="Europe/Paris")  # 2:30 does not exist on 29 March
    night = skipped.next_after(_at("2026-03-28T12:00:00+00:00"))
    assert _at("2026-03-29T00:00:00+00:00") <= night < _at("2026-03-29T02:00:00+00:00")
    assert skipped.next_after(night) == _at("2026-03-30T00:30:00+00:00")


def test_an_interval_counts_from_the_epoch_so_every_worker_agrees():
    every = Timing(every_seconds=2)
    assert every.next_after(_at("2026-01-01T00:00:01.5+00:00")) == _at("2026-01-01T00:00:02+00:00")
    assert every.next_after(_at("2026-01-01T00:00:02+00:00")) == _at("2026-01-01T00:00:04+00:00")
    assert every.latest_until(_at("2026-01-01T00:00:07.9+00:00")) == _at("2026-01-01T00:00:06+00:00")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"cron": "0 3 * * *", "every_seconds": 5},
        {"cron": "not cron"},
        {"every_seconds": 0.1},
        {"cron": "0 3 * * *", "timezone": "Mars/Olympus"},
    ],
)
def test_a_bad_timing_is_refused(options):
    with pytest.raises(InvalidSchedule):
        Timing(**options)


# --- declared in code -----------------------------------------------------------------------------

nightly_report = schedule("test-nightly", "noop", cron="0 3 * * *", timezone="Europe/Paris", args={})


def test_a_registry_collects_the_schedules_declared_in_a_module(settings):
    import sys

    registry = Registry(settings)
    registry.add_module(sys.modules[__name__])
    assert registry.schedules() == [nightly_report]


def test_the_declared_schedules_are_upserted_without_clobbering_a_pause(database):
    spec = ScheduleSpec(name="declared", kind="noop", timing=Timing(every_seconds=60))
    with db.session_scope(database.sessions) as session:
        service.upsert_declared(session, [spec])
    with db.session_scope(database.sessions) as session:
        service.pause_schedule(session, "declared")
    changed = ScheduleSpec(name="declared", kind="noop", timing=Timing(every_seconds=30), args={"a": 1})
    with db.session_scope(database.sessions) as session:
        service.upsert_declared(session, [changed])
    with database.readers() as session:
        (row,) = service.list_schedules(session)
        assert (row.declared, row.paused, row.every_seconds, row.args) == (True, True, 30.0, {"a": 1})


# --- firing ---------------------------------------------------------------------------------------


def _every(database, name: str, seconds: float, start: dt.datetime) -> None:
    """A schedule firing every ``seconds``, its first fire the first tick after ``start``."""
    with db.session_scope(database.sessions) as session:
        service.create_schedule(session, name, "noop", Timing(every_seconds=seconds))
        service.get_schedule(session, name).next_fire_at = Timing(every_seconds=seconds).next_after(start)


def _fire(database, now: dt.datetime) -> list[service.Fire]:
    with db.session_scope(database.sessions) as session:
        return service.fire_due(session, now=now)


def _fires(database, name: str) -> list[tuple[dt.datetime, bool]]:
    with database.readers() as session:
        return [(f.fire_at, f.manual) for f in reversed(service.list_fires(session, name))]


def test_each_fire_time_makes_one_job_and_nothing_fires_early(database):
    start = _at("2026-01-01T00:00:00.5+00:00")
    _every(database, "tick", 2, start)
    assert _fire(database, start) == []  # not due yet
    first = _fire(database, _at("2026-01-01T00:00:02.01+00:00"))
    assert [f.fire_at for f in first] == [_at("2026-01-01T00:00:02+00:00")]
    assert _fire(database, _at("2026-01-01T00:00:02.5+00:00")) == []  # that time fired already
    _fire(database, _at("2026-01-01T00:00:04.2+00:00"))
    assert _fires(database, "tick") == [
        (_at("2026-01-01T00:00:02+00:00"), False),
        (_at("2026-01-01T00:00:04+00:00"), False),
    ]
    with database.readers() as session:
        jobs = session.scalars(select(models.Job)).all()
        fired = session.scalars(select(schedule_models.ScheduleFire.job_id)).all()
    assert sorted(job.id for job in jobs) == sorted(fired) and all(job.kind == "noop" for job in jobs)


def test_after_downtime_of_three_periods_a_schedule_fires_once_for_the_latest_time(database):
    _every(database, "tick", 2, _at("2026-01-01T00:00:00.5+00:00"))
    _fire(database, _at("2026-01-01T00:00:02.01+00:00"))
    # Down from 2.01 to 9.1: the fires of 4, 6 and 8 are missed.
    caught_up = _fire(database, _at("2026-01-01T00:00:09.1+00:00"))
    assert [f.fire_at for f in caught_up] == [_at("2026-01-01T00:00:08+00:00")]
    with database.readers() as session:
        assert service.get_schedule(session, "tick").next_fire_at == _at("2026-01-01T00:00:10+00:00")


def test_a_paused_schedule_fires_nothing_and_resumes_from_its_next_time(database):
    _every(database, "tick", 2, _at("2026-01-01T00:00:00.5+00:00"))
    with db.session_scope(database.sessions) as session:
        service.pause_schedule(session, "tick")
    assert _fire(database, _at("2026-01-01T00:00:09+00:00")) == []
    with db.session_scope(database.sessions) as session:
        resumed = service.resume_schedule(session, "tick")
        assert resumed.next_fire_at > dt.datetime.now(UTC)


def test_a_manual_run_makes_a_job_and_leaves_the_timing_alone(database):
    _every(database, "tick", 60, _at("2026-01-01T00:00:00+00:00"))
    with db.session_scope(database.sessions) as session:
        job = service.run_schedule(session, "tick")
        assert job.kind == "noop"
    assert [manual for _, manual in _fires(database, "tick")] == [True]
    with database.readers() as session:
        assert service.get_schedule(session, "tick").next_fire_at == _at("2026-01-01T00:01:00+00:00")


@pytest.mark.postgres_only
def test_workers_firing_at_once_make_one_job_per_fire_time(database):
    _every(database, "tick", 2, _at("2026-01-01T00:00:00.5+00:00"))
    now = _at("2026-01-01T00:00:02.01+00:00")
    barrier = threading.Barrier(8)
    fired: list[service.Fire] = []

    def fire() -> None:
        barrier.wait()
        fired.extend(_fire(database, now))

    threads = [threading.Thread(target=fire) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fired) == 1 and len(_fires(database, "tick")) == 1


def test_settings_read_retention_in_short_forms(monkeypatch):
    monkeypatch.setenv("JOBRUNNER_RETAIN_SUCCEEDED", "2d")
    monkeypatch.setenv("JOBRUNNER_RETAIN_FAILED", "P30D")
    settings = Settings()
    assert (settings.retain_succeeded, settings.retain_failed) == (dt.timedelta(days=2), dt.timedelta(days=30))
