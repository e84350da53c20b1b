"""How long ``GET /metrics`` takes on a big database: 10,000,000 ``jobs`` (100,000 of them not
finished) and 30,000,000 ``job_attempts`` on PostgreSQL.

It makes a database of its own, filled inside PostgreSQL with ``generate_series`` by
:mod:`tests.benchmarks.bigfill` (the shape ``scale.py`` uses too), then starts a real API
(``uvicorn api.main:app``) on it and times ``--scrapes`` sequential scrapes from a client in this
process. It prints p50 / p99 / max, each fleet query's plan (to show none scans a whole large
table) and the machine's load. The fill takes a few minutes; the database is dropped at exit, unless
``--database NAME`` names one to keep (and reuse in a later run: it is filled only once).

    .venv/bin/python tests/benchmarks/metrics_scrape.py [--jobs 10000000] [--unfinished 100000]
        [--attempts-per-job 3] [--scrapes 50] [--keep | --database NAME]
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
from sqlalchemy import create_engine

from jobs import store
from jobs.observe import fleet
from tests.benchmarks import bigfill, common

BENCH_DB = "jobrunner_bench_metrics"
TARGET_P99_MS = 100.0


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000_000, help="rows in jobs (default 10,000,000)")
    parser.add_argument("--unfinished", type=int, default=100_000, help="of them not finished (default 100,000)")
    parser.add_argument("--attempts-per-job", type=int, default=3, help="job_attempts rows per job (default 3)")
    parser.add_argument("--scrapes", type=int, default=50, help="scrapes timed (default 50)")
    parser.add_argument("--keep", action="store_true", help="print the database URL and keep it (no drop at exit)")
    parser.add_argument(
        "--database",
        metavar="NAME",
        help="fill database NAME and keep it, or reuse it if an earlier run filled it with the same shape",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.database:
        url = bigfill.filled_database(
            args.database, jobs=args.jobs, unfinished=args.unfinished, attempts_per_job=args.attempts_per_job, keep=True
        )
    else:
        url = bigfill.filled_database(
            BENCH_DB, jobs=args.jobs, unfinished=args.unfinished, attempts_per_job=args.attempts_per_job
        )
        if args.keep:
            bigfill.keep_nothing()
            print(f"database kept: {url}")
    print("fleet queries (EXPLAIN ANALYZE):")
    explain_fleet_queries(url)
    with tempfile.TemporaryDirectory() as workdir:
        load_before = os.getloadavg()
        timings = time_scrapes(url, args.scrapes, Path(workdir))
        load_after = os.getloadavg()
    p50, p99 = statistics.median(timings), bigfill.percentile(timings, 0.99)
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
