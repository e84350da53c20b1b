"""CPU per job of the worker's own path (claim, session, handler, fenced success), in the worker and
in PostgreSQL: a figure that holds still on a shared machine, where jobs/s do not.

``throughput.py`` gives jobs/s, which on a machine with other work on it moves by a third from one
run to the next. This script counts CPU *time* instead: one thread runs ``--jobs`` noop jobs through
the worker's real middleware (built as a worker process builds it, ``WorkerLifecycle`` included: the
same pool settings, heartbeat and sweeper threads), exactly as Dramatiq's worker thread does for
each message (``emit_before("process_message")``, the actor, ``emit_after("process_message")``),
with no broker round trips (Redis's consume and ack are the same work bare Dramatiq does). It reads

- the worker thread's CPU time (``time.thread_time``), per job;
- the CPU time of the PostgreSQL server processes serving the worker's connections
  (``application_name = 'jobrunner-worker'``, from ``/proc/<pid>/stat``), per job;
- the wall time, per job (the only figure the machine's load moves much).

Each of ``--repeat`` rounds uses fresh jobs; the summary gives medians. Run it from two checkouts
one after the other to compare them. It never asserts. On PostgreSQL (a database of its own on
``JOBRUNNER_BENCH_PG_ADMIN_URL``, dropped at exit); no Redis is needed::

    .venv/bin/python tests/benchmarks/hot_path_cpu.py [--jobs 5000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
import types
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.benchmarks import common

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu_seconds(engine, application_name: str) -> float:  # type: ignore[no-untyped-def]
    """User + system CPU of the server processes of ``application_name``'s connections."""
    from sqlalchemy import text

    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"), {"name": application_name}
        ).scalars()
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone, or on another host
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="noop jobs per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; medians are reported")
    args = parser.parse_args()

    url = common.recreate_database("jobrunner_hotcpu")
    os.environ.update({"JOBRUNNER_DATABASE_URL": url, "JOBRUNNER_BROKER_URL": "redis://127.0.0.1:1/0"})
    from dramatiq import Message
    from sqlalchemy import insert, text

    from jobs import db, kinds, models
    from jobs.config import Settings
    from worker import broker as worker_broker
    from worker import producer

    settings = Settings()
    registry = kinds.load_registry(settings)
    broker = worker_broker.make_worker_broker(settings, registry)
    # As a worker process boots (the pool as the worker builds it), with no consumer threads.
    fake_worker = types.SimpleNamespace(worker_threads=8)
    broker.emit_before("worker_boot", fake_worker)
    admin = db.make_engine(url, pool_size=1, application_name="jobrunner-bench")
    actor = broker.get_actor(producer.actor_name("default"))
    rounds: list[tuple[float, float, float]] = []
    try:
        for round_ in range(1, args.repeat + 1):
            ids = [uuid.uuid4() for _ in range(args.jobs)]
            now = dt.datetime.now(dt.UTC)
            row = {"kind": "noop", "queue": "default", "args": {}, "status": "queued", "attempts": 0}
            rows = [
                {**row, "id": i, "max_attempts": 3, "replay_count": 0, "created_at": now, "enqueued_at": now}
                for i in ids
            ]
            with admin.begin() as conn:
                conn.execute(text("TRUNCATE jobs CASCADE"))
                conn.execute(insert(models.Job.__table__), rows)
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE jobs"))
            messages = [
                Message(queue_name="default", actor_name=actor.actor_name, args=(str(i),), kwargs={}, options={})
                for i in ids
            ]
            server_before = backend_cpu_seconds(admin, "jobrunner-worker")
            wall_before, cpu_before = time.perf_counter(), time.thread_time()
            for message in messages:
                broker.emit_before("process_message", message)
                result = actor(*message.args)
                broker.emit_after("process_message", message, result=result)
            cpu, wall = time.thread_time() - cpu_before, time.perf_counter() - wall_before
            server = backend_cpu_seconds(admin, "jobrunner-worker") - server_before
            with admin.connect() as conn:
                done = conn.execute(text("SELECT count(*) FROM jobs WHERE status = 'succeeded'")).scalar_one()
            per_job = (1e6 * cpu / args.jobs, 1e6 * server / args.jobs, 1e6 * wall / args.jobs)
            rounds.append(per_job)
            print(
                f"round {round_}: {done}/{args.jobs} succeeded; per job: worker CPU {per_job[0]:.0f} us, "
                f"PostgreSQL CPU {per_job[1]:.0f} us, wall {per_job[2]:.0f} us; load {os.getloadavg()[0]:.1f}"
            )
    finally:
        broker.emit_before("worker_shutdown", fake_worker)
        broker.emit_after("worker_shutdown", fake_worker)
        broker.close()
        admin.dispose()
    medians = [statistics.median(column) for column in zip(*rounds, strict=True)]
    print(
        f"median of {len(rounds)} rounds of {args.jobs} jobs, per job: worker CPU {medians[0]:.0f} us, "
        f"PostgreSQL CPU {medians[1]:.0f} us, wall {medians[2]:.0f} us"
    )


if __name__ == "__main__":
    main()
