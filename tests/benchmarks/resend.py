"""Re-sends under a backlog: how many messages the sweeper sends again while workers drain a backlog
longer than ``REQUEUE_AFTER_SECONDS``, with and without asking Redis what it still holds.

    .venv/bin/python tests/benchmarks/resend.py --jobs 50000

Each scenario creates ``--jobs`` noop jobs (their IDs sent to Redis as the API sends them), starts one
``jobctl worker`` process (``--threads`` threads) whose own sweeper is off, and runs the sweeper pass
itself every ``--sweep-every`` seconds with ``--requeue-after`` seconds as the cutoff, until every job
succeeded. Scenarios:

- ``probe``: the sweeper asks Redis which overdue jobs' messages it still holds and sends only the
  others (the runner's behaviour);
- ``blind``: every overdue ``queued`` job is sent again (the behaviour before the probe; emulated by
  ``resend_held_after_seconds`` near zero, which trusts no held message);
- ``probe+flush``: as ``probe``, with Redis flushed (every message lost) once a third of the jobs
  have succeeded: everything must still run, each job once.

Printed per scenario: re-sends, re-sends per job, jobs run more than once (attempts > 1), the drain
time and the jobs/s. Uses a database and a Redis of its own (see tests/benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis
from sqlalchemy import text

from jobs import db, kinds, store
from jobs.config import Settings
from tests.benchmarks import common
from worker import producer, sweeper

BIN = Path(sys.executable).parent
CREATE_BATCH = 5_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50_000, help="backlog size (default 50,000)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--requeue-after", type=float, default=5.0, help="re-send cutoff in seconds (default 5)")
    parser.add_argument("--sweep-every", type=float, default=1.0, help="seconds between sweeper passes (default 1)")
    parser.add_argument(
        "--scenarios", default="probe,blind,probe+flush", help="comma-separated: probe, blind, probe+flush"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on a scenario after this long")
    return parser.parse_args(argv)


def run_scenario(name: str, args: argparse.Namespace, url: str, redis_url: str, workdir: Path) -> dict[str, float]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    engine = db.make_engine(url, pool_size=2, application_name="jobrunner-bench")
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE jobs CASCADE"))
    settings = Settings(
        database_url=url,
        broker_url=redis_url,
        requeue_after_seconds=args.requeue_after,
        resend_held_after_seconds=1e-6 if name == "blind" else 3600,
    )
    broker = producer.make_broker(settings)
    database = db.make_database(
        url, pool_size=2, sender=producer.make_sender(broker), registry=kinds.load_registry(settings)
    )
    for offset in range(0, args.jobs, CREATE_BATCH):
        with db.session_scope(database.sessions) as session:
            store.create_jobs(session, "noop", [{}] * min(CREATE_BATCH, args.jobs - offset))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
    env.update(
        JOBRUNNER_DATABASE_URL=url,
        JOBRUNNER_BROKER_URL=redis_url,
        JOBRUNNER_SWEEP_INTERVAL_SECONDS="86400",  # this script runs the sweeper passes itself
        JOBRUNNER_CONSUMER_TIMEOUT_MS="10",
    )
    log_path = workdir / f"worker-{name}.log"
    worker = common.spawn(
        [str(BIN / "jobctl"), "worker", "--processes", "1", "--threads", str(args.threads)], env=env, log_path=log_path
    )
    held = producer.held_probe(broker)
    resent = passes = 0
    flushed = "flush" not in name
    started = time.monotonic()
    try:
        while True:
            time.sleep(args.sweep_every)
            with engine.connect() as conn:
                done = conn.execute(text("SELECT count(*) FROM jobs WHERE status = 'succeeded'")).scalar_one()
            if done >= args.jobs:
                break
            if not flushed and done >= args.jobs // 3:
                client.flushdb()
                flushed = True
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited:\n{common.log_tail(log_path)}")
            if time.monotonic() - started > args.timeout:
                raise SystemExit(f"{name}: {done} of {args.jobs} done after {args.timeout} s")
            report = sweeper.sweep_once(database, settings, held=held)
            resent += len(report.resent)
            passes += 1
        elapsed = time.monotonic() - started
    finally:
        common.stop(worker, signal_group=False)
        database.dispose()
        broker.close()
    with engine.connect() as conn:
        doubled = conn.execute(text("SELECT count(*) FROM jobs WHERE attempts > 1")).scalar_one()
        attempts = conn.execute(text("SELECT count(*) FROM job_attempts")).scalar_one()
    engine.dispose()
    client.close()
    return {
        "resent": resent,
        "per_job": resent / args.jobs,
        "passes": passes,
        "doubled": doubled,
        "attempt_rows": attempts,
        "seconds": elapsed,
        "jobs_per_s": args.jobs / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = common.recreate_database("jobrunner_bench_resend")
    redis_url = common.redis_url(12)
    load = os.getloadavg()
    print(f"backlog {args.jobs:,} jobs, requeue after {args.requeue_after} s, sweep every {args.sweep_every} s")
    results = {}
    with tempfile.TemporaryDirectory(prefix="jobrunner-resend-") as workdir:
        try:
            for name in args.scenarios.split(","):
                results[name] = run_scenario(name, args, url, redis_url, Path(workdir))
                r = results[name]
                print(
                    f"{name:12} re-sent {r['resent']:>8,.0f} ({r['per_job']:.3f}/job) in {r['passes']:.0f} passes; "
                    f"attempts>1: {r['doubled']:.0f}; attempt rows {r['attempt_rows']:,.0f}; "
                    f"drained in {r['seconds']:.1f} s ({r['jobs_per_s']:,.0f} jobs/s)"
                )
        finally:
            common.stop_all(signal_group=False)
    print(f"load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}")
    ok = all(r["doubled"] == 0 and r["attempt_rows"] == args.jobs for r in results.values())
    print("every job ran once" if ok else "SOME JOB RAN MORE THAN ONCE OR NOT AT ALL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
