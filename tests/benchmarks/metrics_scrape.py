"""How long ``GET /metrics`` takes on a big database: 10,000,000 ``jobs`` (100,000 of them not
finished) and 30,000,000 ``job_attempts`` on PostgreSQL.

It makes a database of its own (migrated to the newest revision), fills it in the database with
``generate_series`` (the secondary indexes and the attempts' foreign key are dropped for the fill
and built again after it, the counting trigger is off for it and the counter table is filled with
as many rows as a busy fleet of 20 kinds makes: 16 shards x 20 kinds x (3 outcomes x 8 duration
buckets + 4 more) = 8,960 rows), runs ``VACUUM ANALYZE``
(what autovacuum does to a real table: index-only scans need the visibility map), then starts a real
API (``uvicorn api.main:app``) on it and times ``--scrapes`` sequential scrapes from a client in
this process. It prints p50 / p99 / max, each fleet query's plan (to show none scans a whole large
table) and the machine's load. The fill takes a few minutes; the database is dropped at exit.

    .venv/bin/python tests/benchmarks/metrics_scrape.py [--jobs 10000000] [--unfinished 100000]
        [--attempts-per-job 3] [--scrapes 50] [--keep]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx
from sqlalchemy import create_engine, text

from jobs import store
from jobs.observe import fleet
from jobs.observe.models import ATTEMPT_SHARDS
from tests.benchmarks import common

BENCH_DB = "jobrunner_bench_metrics"
KINDS = 20
QUEUES = 5
#: Duration buckets a kind's attempts fall in (of the histogram's 17).
BUCKETS_USED = 8
#: Rows written per transaction during the fill.
FILL_STEP = 1_000_000
TARGET_P99_MS = 100.0


def _secondary_indexes(conn, table: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t AND indexname NOT LIKE 'pk_%'"),
        {"t": table},
    )
    return [(row[0], row[1]) for row in rows]


def fill(url: str, *, jobs: int, unfinished: int, attempts_per_job: int) -> None:
    """Fill ``jobs``, ``job_attempts`` and ``attempt_counters`` as the module doc says."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    every = max(jobs // unfinished, 1)
    with engine.connect() as conn:
        conn.execute(text("SET synchronous_commit = off"))
        indexes = _secondary_indexes(conn, "jobs") + _secondary_indexes(conn, "job_attempts")
        fk = conn.execute(
            text(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'job_attempts'::regclass AND contype = 'f'"
            )
        ).one()
        for name, _ in indexes:
            conn.execute(text(f'DROP INDEX "{name}"'))
        conn.execute(text(f'ALTER TABLE job_attempts DROP CONSTRAINT "{fk[0]}"'))
        conn.execute(text("ALTER TABLE job_attempts DISABLE TRIGGER count_job_attempts"))
        started = time.monotonic()
        for first in range(1, jobs + 1, FILL_STEP):
            last = min(first + FILL_STEP - 1, jobs)
            conn.execute(
                text(f"""
INSERT INTO jobs (id, kind, queue, args, status, attempts, max_attempts, created_at, enqueued_at,
                  started_at, finished_at, replay_count, lease_expires_at, claim_token, worker_id)
SELECT md5(i::text)::uuid, 'kind' || (i % {KINDS}), 'queue' || (i % {QUEUES}), '{{}}'::jsonb,
       CASE WHEN i % {every} = 0 THEN (ARRAY['queued', 'running', 'retrying'])[1 + (i / {every}) % 3]
            WHEN i % 37 = 0 THEN 'failed' ELSE 'succeeded' END,
       {attempts_per_job}, {attempts_per_job + 2},
       now() - make_interval(secs => ({jobs} - i) * 0.1), now() - make_interval(secs => ({jobs} - i) * 0.1),
       now() - make_interval(secs => ({jobs} - i) * 0.1 - 1), now() - make_interval(secs => ({jobs} - i) * 0.1 - 2),
       0,
       CASE WHEN i % {every} = 0 AND (i / {every}) % 3 = 1
            THEN now() + make_interval(secs => (i % 7) * 10 - 5) END,
       CASE WHEN i % {every} = 0 AND (i / {every}) % 3 = 1 THEN md5((-i)::text)::uuid END,
       CASE WHEN i % {every} = 0 AND (i / {every}) % 3 = 1 THEN 'host:' || (i % 64) END
FROM generate_series({first}, {last}) AS i
""")
            )
            conn.execute(
                text(f"""
INSERT INTO job_attempts (job_id, run, number, worker_id, started_at, finished_at, outcome)
SELECT md5(i::text)::uuid, 0, n, 'host:' || (i % 64), now() - make_interval(secs => ({jobs} - i) * 0.1 + 1),
       now() - make_interval(secs => ({jobs} - i) * 0.1),
       CASE WHEN n < {attempts_per_job} THEN 'error' WHEN i % 37 = 0 THEN 'failed' ELSE 'succeeded' END
FROM generate_series({first}, {last}) AS i, generate_series(1, {attempts_per_job}) AS n
""")
            )
            print(f"  filled {last:,} jobs ({time.monotonic() - started:.0f} s)", flush=True)
        # Every shard x kind: succeeded, error and failed attempts over BUCKETS_USED duration buckets,
        # interrupted over 2, lost and replayed without a duration.
        conn.execute(
            text(f"""
INSERT INTO attempt_counters (shard, kind, outcome, worker_lost, bucket, count, seconds)
SELECT s, 'kind' || k, o, CASE WHEN o = 'lost' THEN 1 ELSE 0 END, b, 1000 + s + k + b, 1.5 * (1000 + s + k + b)
FROM generate_series(0, {ATTEMPT_SHARDS - 1}) s, generate_series(0, {KINDS - 1}) k,
     (SELECT o, b FROM unnest(ARRAY['succeeded', 'error', 'failed']) o, generate_series(3, {2 + BUCKETS_USED}) b
      UNION ALL SELECT 'interrupted', b FROM generate_series(5, 6) b
      UNION ALL SELECT o, -1 FROM unnest(ARRAY['lost', 'replayed']) o) AS outcomes
""")
        )
        print("  building the indexes again", flush=True)
        for _, definition in indexes:
            conn.execute(text(definition))
        conn.execute(text(f'ALTER TABLE job_attempts ADD CONSTRAINT "{fk[0]}" {fk[1]}'))
        conn.execute(text("ALTER TABLE job_attempts ENABLE TRIGGER count_job_attempts"))
        conn.execute(text("VACUUM ANALYZE jobs"))
        conn.execute(text("VACUUM ANALYZE job_attempts"))
        conn.execute(text("VACUUM ANALYZE attempt_counters"))
        print(f"  filled and indexed in {time.monotonic() - started:.0f} s", flush=True)
    engine.dispose()


def explain_fleet_queries(url: str) -> None:
    """Print each fleet query's plan: which tables and indexes it reads."""
    engine = create_engine(url)
    with engine.connect() as conn:
        # The statements the collector runs, captured from SQLAlchemy's event stream.
        captured: list[tuple[str, object]] = []

        def capture(conn_, cursor, statement, parameters, context, executemany):
            captured.append((statement, parameters))

        from sqlalchemy import event

        event.listen(engine, "before_cursor_execute", capture)
        now = store.utcnow()
        fleet.unfinished_jobs(conn, now=now)
        fleet.attempt_counts(conn)
        fleet.named_counters(conn)
        fleet.worker_beats(conn, since=now)
        event.remove(engine, "before_cursor_execute", capture)
        for statement, parameters in captured:
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + statement, parameters).all()
            lines = [row[0] for row in plan]
            print("  " + " ".join(statement.split())[:110])
            for line in lines:
                if any(word in line for word in ("Scan", "Execution Time")):
                    print("      " + line.strip())
    engine.dispose()


def time_scrapes(url: str, scrapes: int, workdir: Path) -> list[float]:
    """Start the API on ``url`` and time ``scrapes`` sequential GET /metrics (milliseconds)."""
    port = common.free_port()
    env = dict(os.environ, JOBRUNNER_DATABASE_URL=url, JOBRUNNER_BROKER_URL=common.redis_url(14))
    log = workdir / "api.log"
    argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port), "--log-level", "warning"]
    api = common.spawn(argv, env=env, log_path=log)
    try:
        base = f"http://127.0.0.1:{port}"
        common.wait_for_http(f"{base}/healthz", proc=api, log_path=log)
        timings = []
        with httpx.Client(base_url=base, timeout=30) as client:
            client.get("/metrics").raise_for_status()  # warm: the pool's first connection
            for _ in range(scrapes):
                began = time.perf_counter()
                answer = client.get("/metrics")
                timings.append((time.perf_counter() - began) * 1000)
                answer.raise_for_status()
        print(f"  one scrape: {len(answer.content):,} bytes, {answer.text.count(chr(10)):,} lines")
        return timings
    finally:
        common.stop(api)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000_000, help="rows in jobs (default 10,000,000)")
    parser.add_argument("--unfinished", type=int, default=100_000, help="of them not finished (default 100,000)")
    parser.add_argument("--attempts-per-job", type=int, default=3, help="job_attempts rows per job (default 3)")
    parser.add_argument("--scrapes", type=int, default=50, help="scrapes timed (default 50)")
    parser.add_argument("--keep", action="store_true", help="print the database URL and keep it (no drop at exit)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = common.recreate_database(BENCH_DB)
    if args.keep:
        import atexit

        atexit.unregister(common._admin)
        print(f"database kept: {url}")
    attempts = args.jobs * args.attempts_per_job
    print(f"filling {args.jobs:,} jobs ({args.unfinished:,} not finished), {attempts:,} attempts")
    fill(url, jobs=args.jobs, unfinished=args.unfinished, attempts_per_job=args.attempts_per_job)
    print("fleet queries (EXPLAIN ANALYZE):")
    explain_fleet_queries(url)
    with tempfile.TemporaryDirectory() as workdir:
        load_before = os.getloadavg()
        timings = time_scrapes(url, args.scrapes, Path(workdir))
        load_after = os.getloadavg()
    p50, p99 = statistics.median(timings), percentile(timings, 0.99)
    print(
        f"\nscrape over {args.scrapes} runs: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(timings):.1f} ms"
        f" (target p99 < {TARGET_P99_MS:.0f} ms)"
    )
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        common.stop_all()
