"""Size of the ``jobs`` table over a long run with pruning on: does it stay stable?

One real worker (``jobctl worker --processes 1 --threads 8``) runs ``noop`` jobs that a producer in
this script creates through the real path (``store.create_job``, 500 per transaction), keeping at
most ``--backlog`` jobs waiting, until ``--jobs`` jobs have run. Every ``--prune-every`` seconds the
script prunes (``store.prune_jobs``, as ``jobctl prune`` does) the jobs that succeeded more than
``--keep-seconds`` ago. Every ``--sample-every`` seconds it prints the table's size (heap and
total with indexes and TOAST), live and dead tuples and autovacuum's runs, from PostgreSQL's own
statistics; autovacuum runs with the server's settings (printed at start): by default the server
is one the script starts for itself (``initdb`` in a temp dir, PostgreSQL's defaults, so autovacuum
on), since a shared server may run with autovacuum off. The summary compares the
total size after the first tenth of the jobs (warmed up: pruning has begun) with its largest and
last value; the issue's target is "within 20 %". It never asserts.

Run from the project root (with ``--broker redis`` it also starts a redis-server of its own;
``--shared-server`` uses the PostgreSQL of ``JOBRUNNER_BENCH_PG_ADMIN_URL`` instead, in a database of
its own, dropped at exit)::

    .venv/bin/python tests/benchmarks/bloat.py [--jobs N] [--broker postgresql|redis] [--shared-server]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text

from jobs import db, kinds, migrate, store
from jobs.config import Settings
from jobs.models import JobStatus
from tests import servers
from tests.benchmarks import common
from worker import producer

BENCH_DB = "jobrunner_bloat"
BIN = Path(sys.executable).parent
#: Jobs per producer transaction.
BATCH = 500

_STATS = text(
    """
    SELECT pg_relation_size('jobs') AS heap, pg_total_relation_size('jobs') AS total,
           s.n_live_tup AS live, s.n_dead_tup AS dead, s.autovacuum_count AS autovacuums,
           (SELECT count(*) FROM jobs WHERE status = 'succeeded') AS succeeded
    FROM pg_stat_user_tables s WHERE s.relname = 'jobs'
    """
)


def _settings_line(engine) -> str:
    names = ("autovacuum", "autovacuum_naptime", "autovacuum_vacuum_scale_factor", "autovacuum_vacuum_threshold")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, setting FROM pg_settings WHERE name = ANY(:n)"), {"n": list(names)})
        return ", ".join(f"{name}={setting}" for name, setting in rows)


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f}"


def run(args: argparse.Namespace) -> int:
    if args.shared_server:
        return measure(args, common.recreate_database(BENCH_DB))
    server = servers.ThrowawayPostgres()
    try:
        migrate.upgrade(server.url)
        return measure(args, server.url)
    finally:
        server.stop()


def measure(args: argparse.Namespace, url: str) -> int:
    broker_url = url if args.broker == "postgresql" else common.redis_url(12)
    settings = Settings(database_url=url, broker_url=broker_url, consumer_timeout_ms=10)
    broker = producer.make_broker(settings)
    database = db.make_database(
        url, pool_size=2, sender=producer.make_sender(broker), registry=kinds.load_registry(settings)
    )
    print(f"database {url.rsplit('@', 1)[-1]}; broker {args.broker}; {_settings_line(database.engine)}", flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBRUNNER_", "dramatiq_"))}
    env.update(JOBRUNNER_DATABASE_URL=url, JOBRUNNER_BROKER_URL=broker_url, JOBRUNNER_CONSUMER_TIMEOUT_MS="10")
    with tempfile.TemporaryDirectory(prefix="jobrunner-bloat-") as tmp:
        log_path = Path(tmp) / "worker.log"
        worker = common.spawn(
            [str(BIN / "jobctl"), "worker", "--processes", "1", "--threads", "8"], env=env, log_path=log_path
        )
        samples: list[tuple[int, int]] = []  # (jobs run, total size)
        created = pruned = 0
        started = last_prune = last_sample = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                with database.engine.connect() as conn:
                    waiting = store.count_unfinished(conn, "default")
                out_of_time = args.minutes is not None and now - started > args.minutes * 60
                if out_of_time and created < args.jobs:
                    print(f"  stopping at {created:,} jobs created: --minutes {args.minutes:g} passed", flush=True)
                    args.jobs = created
                if created < args.jobs and waiting < args.backlog:
                    with db.session_scope(database.sessions) as session:
                        for _ in range(min(BATCH, args.jobs - created)):
                            store.create_job(session, "noop")
                    created += min(BATCH, args.jobs - created)
                else:
                    time.sleep(0.05)
                if now - last_prune >= args.prune_every:
                    last_prune = now
                    pruned += _prune(database, args.keep_seconds)
                if now - last_sample >= args.sample_every or (created >= args.jobs and waiting == 0):
                    last_sample = now
                    with database.engine.connect() as conn:
                        stats = conn.execute(_STATS).one()
                    done = created - waiting
                    samples.append((done, stats.total))
                    print(
                        f"  {now - started:7.0f} s  run {done:>9,}  pruned {pruned:>9,}  heap {_mib(stats.heap):>7} MiB"
                        f"  total {_mib(stats.total):>7} MiB  live {stats.live:>8,}  dead {stats.dead:>8,}"
                        f"  autovacuums {stats.autovacuums}  ({done / (now - started):,.0f} jobs/s)",
                        flush=True,
                    )
                    if created >= args.jobs and waiting == 0:
                        break
                if worker.poll() is not None:
                    print(f"worker exited ({worker.returncode}):\n{common.log_tail(log_path)}", flush=True)
                    return 1
        finally:
            common.stop_all()
            database.dispose()
            broker.close()
    _summary(args, samples)
    return 0


def _prune(database: db.Database, keep_seconds: float) -> int:
    older_than = store.utcnow() - dt.timedelta(seconds=keep_seconds)
    total = 0
    while True:
        with db.session_scope(database.sessions) as session:
            deleted = store.prune_jobs(session, statuses=[JobStatus.SUCCEEDED], older_than=older_than, batch_size=5000)
        total += deleted
        if deleted == 0:
            return total


def _summary(args: argparse.Namespace, samples: Sequence[tuple[int, int]]) -> None:
    warm = next((size for done, size in samples if done >= args.jobs // 10), None)
    if warm is None or not samples:
        print("too few samples for a summary")
        return
    largest, last = max(size for _, size in samples), samples[-1][1]
    print(
        f"\njobs table total size: {_mib(warm)} MiB after {args.jobs // 10:,} jobs, largest {_mib(largest)} MiB "
        f"({largest / warm - 1:+.0%}), last {_mib(last)} MiB ({last / warm - 1:+.0%}) after {samples[-1][0]:,} jobs; "
        f"target: within 20 % -> {'meets' if largest <= warm * 1.2 else 'MISSES'}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs to run (default 1,000,000)")
    parser.add_argument("--broker", choices=("postgresql", "redis"), default="postgresql")
    parser.add_argument("--backlog", type=int, default=5_000, help="most jobs waiting at once (default 5000)")
    parser.add_argument("--prune-every", type=float, default=10.0, help="seconds between prunes (default 10)")
    parser.add_argument("--keep-seconds", type=float, default=30.0, help="prune jobs older than this (default 30)")
    parser.add_argument("--sample-every", type=float, default=15.0, help="seconds between samples (default 15)")
    parser.add_argument("--minutes", type=float, help="stop creating jobs after this long (then finish and report)")
    parser.add_argument(
        "--shared-server", action="store_true", help="use JOBRUNNER_BENCH_PG_ADMIN_URL's server, not one of its own"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(args)
    except KeyboardInterrupt:
        common.stop_all()
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
