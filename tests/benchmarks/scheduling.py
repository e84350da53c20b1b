"""Precision of scheduling: how late cron fires and delayed jobs are, with real workers.

What it does: a PostgreSQL database of its own (``jobrunner_sched_<run>``, migrated, dropped at exit)
and a Redis of its own; one schedule firing every ``--every`` seconds; ``--workers`` real
``jobctl worker --processes 1 --threads 4`` processes (each runs the scheduler thread); meanwhile
``--delayed`` ``noop`` jobs created one per transaction with ``delay`` spread over the run (each
sent with the broker's delay). After ``--seconds`` the workers are stopped and it prints, from the
rows' own timestamps:

- fire lateness: ``jobs.created_at - schedule_fires.fire_at`` (when the fire's job existed), and
  ``started_at - fire_at`` (when it began running); p50, p99, max; fires missed or doubled;
- delayed-job lateness: ``started_at - run_at``; p50, p99, max; how many started before ``run_at``
  (must be 0).

It never asserts; the machine's load average is printed before and after (on a shared machine the
figures are only as good as that is small).

Run from the project root::

    .venv/bin/python tests/benchmarks/scheduling.py [--seconds 60] [--every 1] [--workers 2] [--delayed 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import select

from tests.benchmarks import common

BIN = Path(sys.executable).parent


def _percentiles(values_ms: list[float]) -> str:
    if not values_ms:
        return "none"
    ordered = sorted(values_ms)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return f"n={len(ordered)} p50={statistics.median(ordered):.1f} ms p99={p99:.1f} ms max={ordered[-1]:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the workers run (default 60)")
    parser.add_argument("--every", type=float, default=1.0, help="the schedule's interval in seconds (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--delayed", type=int, default=200, help="delayed jobs created during the run (default 200)")
    args = parser.parse_args()

    url = common.recreate_database("jobrunner_sched")
    redis_url = common.redis_url(12)
    os.environ.update(JOBRUNNER_DATABASE_URL=url, JOBRUNNER_BROKER_URL=redis_url)
    from jobs import db, kinds, models, store
    from jobs.config import get_settings
    from jobs.scheduling import models as schedule_models
    from jobs.scheduling import service, timing
    from worker import producer

    settings = get_settings()
    broker = producer.make_broker(settings)
    database = db.make_database(
        url, pool_size=2, sender=producer.make_sender(broker), registry=kinds.load_registry(settings)
    )
    print(f"load before: {os.getloadavg()}")
    logs = Path(tempfile.mkdtemp(prefix="jobrunner-sched-"))
    workers = [
        common.spawn(
            [str(BIN / "jobctl"), "worker", "--processes", "1", "--threads", "4"],
            env=dict(os.environ),
            log_path=logs / f"worker-{n}.log",
        )
        for n in range(args.workers)
    ]
    try:
        with db.session_scope(database.sessions) as session:
            service.create_schedule(session, "bench", "noop", timing.Timing(every_seconds=args.every))
        deadline = time.monotonic() + args.seconds
        pause = args.seconds / max(1, args.delayed) * 0.8
        for _ in range(args.delayed):
            left = deadline - time.monotonic()
            if left < 3:
                break
            with db.session_scope(database.sessions) as session:
                store.create_job(session, "noop", delay=random.uniform(0.5, min(20.0, left - 2)))
            time.sleep(pause)
        time.sleep(max(0.0, deadline - time.monotonic()))
        time.sleep(3)  # the last due jobs start
    finally:
        for proc in workers:
            common.stop(proc, grace_seconds=30.0)
    print(f"load after: {os.getloadavg()}")

    fire, job = schedule_models.ScheduleFire, models.Job
    with database.readers() as session:
        fires = session.execute(
            select(fire.fire_at, job.created_at, job.started_at).join(job, job.id == fire.job_id).order_by(fire.fire_at)
        ).all()
        delayed = session.execute(select(job.run_at, job.started_at).where(job.run_at.is_not(None))).all()
    database.dispose()
    broker.close()

    times = [row.fire_at for row in fires]
    step = dt.timedelta(seconds=args.every)
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    print(f"\nschedule every {args.every:g} s, {args.workers} worker(s), {args.seconds:g} s")
    print(f"fires: {len(times)}; not one step apart: {sum(1 for gap in gaps if gap != step)} (missed or doubled)")
    ms = 1000.0
    print("fire -> job created:  " + _percentiles([(r.created_at - r.fire_at).total_seconds() * ms for r in fires]))
    started = [r for r in fires if r.started_at is not None]
    print("fire -> job started:  " + _percentiles([(r.started_at - r.fire_at).total_seconds() * ms for r in started]))
    ran = [r for r in delayed if r.started_at is not None]
    early = sum(1 for r in ran if r.started_at < r.run_at)
    print(f"\ndelayed jobs: {len(delayed)} created, {len(ran)} started, {early} started before run_at")
    print("run_at -> started:    " + _percentiles([(r.started_at - r.run_at).total_seconds() * ms for r in ran]))


if __name__ == "__main__":
    main()
