"""Dashboard page times on a big ``jobs`` table (PostgreSQL).

What it measures (PostgreSQL database ``jobrunner_bench_dashboard``, made, migrated and dropped at
exit; Redis db 7 of a redis-server of its own):

1. **data**: ``--jobs`` jobs (default 1,000,000), generated in SQL with ``generate_series``: 5 kinds,
   3 queues, created over the last 7 days; 95% succeeded, 2% failed (3 error types, 3 attempts
   each in ``job_attempts``), the rest queued, retrying or running; then ``VACUUM ANALYZE``.
2. **pages**: a real API (``uvicorn api.main:app``); each page loaded twice to warm up, then
   ``--loads`` times (default 20) one after another; p50 and p95 of the wall time of each GET
   (the whole HTTP answer, HTML rendered). Pages: the overview, the jobs list (unfiltered, page 2
   by its cursor, and filtered by status+kind, queue, error type, error text, a time range), a job
   (with its attempts), failures, queues.
3. **plans**: ``EXPLAIN`` of the jobs list's query for each filter (the index it walks).
4. **write cost** of the dashboard's indexes on the hot path: two copies of ``jobs``, one with the
   indexes main had before migration 0012 (primary key, ``(status, kind)``, ``(created_at, id)``),
   one with all of today's; ``--writes`` queued rows in each (default 20,000), then each row's claim
   (``running``, worker, lease) and success (``succeeded``, finished, error cleared) as one UPDATE
   by ID each, in one transaction per table; 3 rounds, alternating, median time per table and ratio.

The script never asserts: it prints the figures and the machine's load (``uptime``), before and after.
Run from the project root::

    .venv/bin/python tests/benchmarks/dashboard.py [--jobs N] [--loads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx
from sqlalchemy import create_engine, text

from tests.benchmarks import common

FILL = """
INSERT INTO jobs (id, kind, queue, args, status, attempts, max_attempts, created_at, enqueued_at,
                  started_at, finished_at, error_type, error_message, replay_count,
                  worker_id, claim_token, lease_expires_at, next_retry_at)
SELECT md5(i::text)::uuid,
       (ARRAY['noop', 'invoice.send', 'report.build', 'email.send', 'file.process'])[1 + (i / 7) % 5],
       (ARRAY['default', 'default', 'slow', 'default', 'bulk'])[1 + (i / 3) % 5],
       jsonb_build_object('n', i),
       s.status,
       CASE WHEN s.status = 'failed' THEN 3 ELSE 1 END,
       3,
       t.created,
       t.created,
       CASE WHEN s.status <> 'queued' THEN t.created + interval '1 second' END,
       CASE WHEN s.status IN ('succeeded', 'failed') THEN t.created + interval '2 seconds' END,
       CASE WHEN s.status IN ('failed', 'retrying')
            THEN (ARRAY['ValueError', 'TimeoutError', 'jobs.errors.PermanentError'])[1 + i % 3] END,
       CASE WHEN s.status IN ('failed', 'retrying') THEN 'upstream answered ' || (i % 997) END,
       0,
       CASE WHEN s.status = 'running' THEN 'bench-host:' || (i % 4) END,
       CASE WHEN s.status = 'running' THEN md5('c' || i)::uuid END,
       CASE WHEN s.status = 'running' THEN now() + interval '20 seconds' END,
       CASE WHEN s.status = 'retrying' THEN now() + interval '1 minute' END
FROM generate_series(1, :jobs) AS i,
     LATERAL (SELECT now() - interval '7 days' * (1 - i::float / :jobs) AS created) AS t,
     LATERAL (SELECT CASE WHEN i % 100 < 95 THEN 'succeeded'
                          WHEN i % 100 < 97 THEN 'failed'
                          WHEN i % 100 < 98 THEN 'retrying'
                          WHEN i % 1000 = 985 THEN 'running'
                          ELSE 'queued' END AS status) AS s
"""

ATTEMPTS = """
INSERT INTO job_attempts (job_id, run, number, worker_id, started_at, finished_at, outcome,
                          error_type, error_message, error_traceback)
SELECT j.id, 0, n, 'bench-host:1', j.started_at, j.finished_at,
       CASE WHEN n < 3 THEN 'error' ELSE 'failed' END, j.error_type, j.error_message,
       'Traceback (most recent call last):\n  File "handler.py", line 1\n' || j.error_type
FROM jobs j, generate_series(1, 3) AS n
WHERE j.status = 'failed'
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--writes", type=int, default=20_000)
    args = parser.parse_args()
    print(f"load before: {_uptime()}")
    url = common.recreate_database("jobrunner_bench_dashboard")
    engine = create_engine(url)
    started = time.monotonic()
    with engine.begin() as conn:
        conn.execute(text(FILL), {"jobs": args.jobs})
        conn.execute(text(ATTEMPTS))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE jobs"))
        conn.execute(text("VACUUM ANALYZE job_attempts"))
    print(f"data: {args.jobs:,} jobs in {time.monotonic() - started:.1f} s")
    with engine.connect() as conn:
        failed_job = conn.scalar(text("SELECT id FROM jobs WHERE status = 'failed' ORDER BY created_at DESC LIMIT 1"))
    engine.dispose()
    _plans(url)
    _write_cost(url, args.writes)
    with tempfile.TemporaryDirectory() as home:
        api = _start_api(url, Path(home))
        try:
            _time_pages(api, failed_job, args.loads)
        finally:
            common.stop_all()
    print(f"load after: {_uptime()}")


def _start_api(url: str, home: Path) -> str:
    port = common.free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("JOBRUNNER_")}
    env.update(JOBRUNNER_DATABASE_URL=url, JOBRUNNER_BROKER_URL=common.redis_url(7))
    argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    log = home / "api.log"
    proc = common.spawn(argv, env=env, log_path=log)
    base = f"http://127.0.0.1:{port}"
    common.wait_for_http(f"{base}/healthz", proc=proc, log_path=log)
    return base


def _time_pages(base: str, failed_job: object, loads: int) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        first = client.get("/dashboard/jobs").text
        cursor = first.split("cursor=", 1)[1].split('"', 1)[0] if "cursor=" in first else ""
        pages = {
            "overview": "/dashboard/",
            "jobs (newest)": "/dashboard/jobs",
            "jobs page 2 (cursor)": f"/dashboard/jobs?cursor={cursor}",
            "jobs status=failed kind": "/dashboard/jobs?status=failed&kind=report.build",
            "jobs queue=slow": "/dashboard/jobs?queue=slow",
            "jobs error_type": "/dashboard/jobs?error_type=TimeoutError",
            "jobs error text": "/dashboard/jobs?error=answered%20996",
            "jobs since 1d until 12h": "/dashboard/jobs?since=1d&until=12h",
            "job detail": f"/dashboard/jobs/{failed_job}",
            "failures": "/dashboard/failures",
            "queues": "/dashboard/queues",
        }
        print(f"\n{'page':<28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}   ({loads} loads)")
        for name, path in pages.items():
            for _ in range(2):
                assert client.get(path).status_code == 200, path
            times = []
            for _ in range(loads):
                start = time.perf_counter()
                answer = client.get(path)
                times.append((time.perf_counter() - start) * 1000)
                assert answer.status_code == 200, (path, answer.status_code)
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            print(f"{name:<28} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f}")


def _plans(url: str) -> None:
    """The plan of the jobs list's query for each filter: which index it walks."""
    import datetime as dt

    from sqlalchemy.dialects import postgresql

    from jobs.models import JobStatus
    from jobs.store import filtering
    from jobs.store.filtering import JobFilter

    now = dt.datetime.now(dt.UTC)
    cases = {
        "newest": JobFilter(),
        "status=failed kind": JobFilter(status=JobStatus.FAILED, kind="report.build"),
        "queue=slow": JobFilter(queue="slow"),
        "error_type": JobFilter(error_type="TimeoutError"),
        "since/until": JobFilter(since=now - dt.timedelta(days=1), until=now - dt.timedelta(hours=12)),
        "error text": JobFilter(error="answered 996"),
    }
    engine = create_engine(url)
    print("\nplans of the jobs list (first lines of EXPLAIN ANALYZE):")
    with engine.connect() as conn:
        for name, job_filter in cases.items():
            query = filtering.list_query(job_filter, limit=50)
            sql = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
            plan = [row[0] for row in conn.execute(text(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}"))]
            scans = [line.strip() for line in plan if "Scan" in line]
            total = next((line for line in plan if line.startswith("Execution Time")), "")
            print(f"  {name:<20} {scans[0] if scans else plan[0]}  [{total}]")
    engine.dispose()


#: The indexes ``jobs`` had before migration 0012 (besides its primary key).
INDEXES_BEFORE = {"ix_jobs_status_kind": "(status, kind)", "ix_jobs_created_at_id": "(created_at, id)"}


def _write_cost(url: str, rows: int) -> None:
    """Time the claim and success UPDATEs of ``rows`` jobs with the old and with today's indexes."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE jobs_before (LIKE jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
        conn.execute(text("ALTER TABLE jobs_before ADD PRIMARY KEY (id)"))
        for name, columns in INDEXES_BEFORE.items():
            conn.execute(text(f"CREATE INDEX {name}_before ON jobs_before {columns}"))
        conn.execute(text("CREATE TABLE jobs_today (LIKE jobs INCLUDING ALL)"))
        count = conn.scalar(text("SELECT count(*) FROM pg_indexes WHERE tablename = 'jobs_today'"))
    print(f"\nwrite cost: {rows:,} claims and successes, by ID, one transaction per table")
    print(f"  indexes: before 0012 {len(INDEXES_BEFORE) + 1}, today {count}")
    timings: dict[str, list[float]] = {"jobs_before": [], "jobs_today": []}
    for _ in range(3):
        for table in timings:
            timings[table].append(_claim_and_succeed(engine, table, rows))
    before, today = (statistics.median(timings[t]) for t in ("jobs_before", "jobs_today"))
    print(f"  before 0012: {before:.2f} s ({rows / before:,.0f} jobs/s)")
    print(f"  today:       {today:.2f} s ({rows / today:,.0f} jobs/s); today / before = {today / before:.2f}")
    engine.dispose()


def _claim_and_succeed(engine: object, table: str, rows: int) -> float:
    from sqlalchemy.engine import Engine

    assert isinstance(engine, Engine)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {table}"))
        conn.execute(text(f"INSERT INTO {table} SELECT * FROM jobs WHERE status = 'succeeded' LIMIT :n"), {"n": rows})
        conn.execute(text(f"UPDATE {table} SET status = 'queued', finished_at = NULL, worker_id = NULL"))
        ids = [{"id": row[0]} for row in conn.execute(text(f"SELECT id FROM {table}"))]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {table}"))
    claim = text(
        f"UPDATE {table} SET status = 'running', worker_id = 'bench', attempts = attempts + 1, "
        "claim_token = gen_random_uuid(), lease_expires_at = now() + interval '30 seconds', "
        "started_at = now() WHERE id = :id"
    )
    succeed = text(
        f"UPDATE {table} SET status = 'succeeded', finished_at = now(), lease_expires_at = NULL, "
        "error_type = NULL, error_message = NULL WHERE id = :id"
    )
    started = time.perf_counter()
    with engine.begin() as conn:
        for row in ids:
            conn.execute(claim, row)
            conn.execute(succeed, row)
    return time.perf_counter() - started


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
