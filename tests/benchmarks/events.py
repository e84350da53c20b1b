"""Throughput of domain events: ingest through ``POST /events`` and handling through the workers.

What it measures (PostgreSQL database ``jobrunner_bench_events``, dropped, re-created and migrated;
Redis db 9, flushed before each scenario; ``user_registered`` events spread over 50 orgs):

1. **ingest**: N events POSTed as lists of 100 to ``jobctl api`` (uvicorn, 1 process) by
   ``--clients`` concurrent HTTP clients; events/s = N / wall time of all the posts (each answer
   comes after the commit and the pipelined send of the job IDs).
2. **bulk limit**: the same rows (N ``events`` + N ``jobs``) inserted by plain Core bulk INSERTs in one
   transaction, plus N bare ``broker.enqueue`` sends (Dramatiq has no bulk send); events/s over both.
3. **handling**: the jobs of (1), already in Redis, run by ``jobctl worker --processes 2 --threads 8``;
   events/s = N / (last finished_at - first started_at) of the ``event.handle`` jobs.
4. **naive**: the same handler work (the org upsert) as bare Dramatiq actors (default middleware),
   2 processes x 8 threads, with the naive session pattern of the core benchmark: per message, one
   ORM session: get the job, ``running``, commit, load the event, run the handler, ``succeeded``,
   commit. No ledger, no fencing. Timed like (3) from the jobs table.

It prints figures and ratios and never asserts. Every process it starts is stopped on exit.

Run from the project root (PostgreSQL at 127.0.0.1:5432,
where it makes a database of its own; a redis-server of its own; both removed at exit)::

    .venv/bin/python tests/benchmarks/events.py [--events N] [--clients K]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import insert, text

from jobs import db, kinds, models, store
from jobs.config import Settings
from jobs.kinds.events import models as event_models
from tests.benchmarks import common

BENCH_DB = "jobrunner_bench_events"
REDIS_URL = common.redis_url(9)
BIN = Path(sys.executable).parent
PORT = 8765
LIST_SIZE = 100
ORGS = 50
PROCESSES, THREADS = 2, 8
POLL_SECONDS = 0.2
TARGET_INGEST = 5000.0
TARGET_INGEST_RATIO = 0.30

NAIVE_MODULE = '''
"""The naive pattern, running the same handler work. Written by tests/benchmarks/events.py."""
import datetime as dt
import os
import uuid
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.orm import Session

from jobs.kinds.events import outbox as events
from jobs.db import make_engine
from jobs.kinds.events import shop as event_handlers
from jobs.kinds.events.models import Event
from jobs.models import Job

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)
engine = make_engine(os.environ["BENCH_DATABASE_URL"], pool_size=10, application_name="jobrunner-bench-naive")


def _now():
    return dt.datetime.now(dt.timezone.utc)


@dramatiq.actor(actor_name="bench.naive_event", queue_name="default")
def naive(job_id):
    with Session(engine) as s:
        job = s.get(Job, uuid.UUID(job_id))
        job.status = "running"
        job.started_at = _now()
        s.commit()
        event = s.get(Event, uuid.UUID(job.args["event_id"]))
        payload = event_handlers.UserRegistered.model_validate(event.payload)
        event_handlers.count_org_user(s, events.StoredEvent(event.id, event.type, payload, event.created_at))
        job.status = "succeeded"
        job.finished_at = _now()
        s.commit()
'''


def reset(engine, client: redis.Redis) -> None:
    client.flushdb()
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE events, event_applications, org_stats, notifications, job_attempts, jobs CASCADE"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def env_for(url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "JOBRUNNER_DATABASE_URL": url,
        "JOBRUNNER_BROKER_URL": REDIS_URL,
        "JOBRUNNER_CONSUMER_TIMEOUT_MS": "10",
        "dramatiq_worker_timeout": "10",
        **extra,
    }


def event_lists(n: int) -> list[list[dict]]:
    events = [
        {
            "type": "user_registered",
            "payload": {"org_id": f"org-{i % ORGS}", "user_id": f"u{i}", "email": f"u{i}@example.com"},
        }
        for i in range(n)
    ]
    return [events[i : i + LIST_SIZE] for i in range(0, n, LIST_SIZE)]


def scenario_ingest(url: str, n: int, clients: int, workdir: Path) -> float:
    log_path = workdir / "api.log"
    proc = common.spawn([str(BIN / "jobctl"), "api", "--port", str(PORT)], env=env_for(url), log_path=log_path)
    base = f"http://127.0.0.1:{PORT}"
    try:
        common.wait_for_http(
            f"{base}/healthz", proc=proc, log_path=log_path, request_timeout=1.0, interval=POLL_SECONDS
        )
        with httpx.Client(base_url=base, timeout=60) as warm:  # warm the pool and the code paths
            warm.post("/events", json=event_lists(LIST_SIZE)[0])
        lists = event_lists(n)
        codes: list[int] = []

        def post_all(part: list[list[dict]]) -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                codes.extend(client.post("/events", json=body).status_code for body in part)

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(post_all, [lists[i::clients] for i in range(clients)]))
        seconds = time.perf_counter() - started
        print(
            f"  ingest: {n:,} events in {len(lists)} posts of {LIST_SIZE}, {clients} clients: {seconds:.2f} s; "
            f"answers {sorted(set(codes))}",
            flush=True,
        )
        return n / seconds
    finally:
        common.stop(proc)


def _handler_job_rows(event_ids: list[uuid.UUID], job_ids: list[uuid.UUID], now: dt.datetime) -> list[dict[str, Any]]:
    """The queued ``event.handle`` job rows (handler ``org_stats``) of these events, as the outbox writes them."""
    return [
        {
            "id": j,
            "kind": "event.handle",
            "queue": "default",
            "args": {"event_id": str(e), "handler": "org_stats"},
            "status": "queued",
            "attempts": 0,
            "max_attempts": 5,
            "created_at": now,
            "enqueued_at": now,
            "replay_count": 0,
        }
        for e, j in zip(event_ids, job_ids, strict=True)
    ]


def scenario_bulk(url: str, n: int) -> float:
    database = db.make_database(url, pool_size=2, registry=kinds.load_registry(Settings(database_url=url)))
    broker = RedisBroker(url=REDIS_URL, middleware=[])
    now = store.utcnow()
    event_ids = [uuid.uuid4() for _ in range(n)]
    job_ids = [uuid.uuid4() for _ in range(n)]
    lists = [e for part in event_lists(n) for e in part]
    event_rows = [
        {
            "id": e,
            "type": "user_registered",
            "payload": body["payload"],
            "handler_jobs": [{"handler": "org_stats", "job_id": str(j)}],
            "created_at": now,
        }
        for e, j, body in zip(event_ids, job_ids, lists, strict=True)
    ]  # n of each
    job_rows = _handler_job_rows(event_ids, job_ids, now)
    try:
        started = time.perf_counter()
        with database.engine.begin() as conn:
            conn.execute(insert(event_models.Event.__table__), event_rows)
            conn.execute(insert(models.Job.__table__), job_rows)
        inserted = time.perf_counter() - started
        for job_id in job_ids:
            broker.enqueue(
                Message(queue_name="default", actor_name="jobrunner.run", args=(str(job_id),), kwargs={}, options={})
            )
        seconds = time.perf_counter() - started
    finally:
        database.dispose()
        broker.close()
    print(
        f"  bulk limit: {n:,} events + jobs inserted in {inserted:.2f} s, + {n:,} bare sends: {seconds:.2f} s",
        flush=True,
    )
    return n / seconds


def wait_handled(engine, proc: subprocess.Popen[bytes], n: int, log_path: Path, timeout: float) -> float | None:
    deadline = time.time() + timeout
    query = text(
        "SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed')), "
        "min(started_at), max(finished_at) FROM jobs WHERE kind = 'event.handle'"
    )
    while True:
        with engine.connect() as conn:
            done, first, last = conn.execute(query).one()
        if done >= n:
            return n / (last - first).total_seconds()
        if proc.poll() is not None or time.time() > deadline:
            print(f"  ! {done}/{n} handled; worker rc={proc.poll()}; log tail:\n{log_path.read_text()[-2000:]}")
            return None
        time.sleep(POLL_SECONDS)


def scenario_handling(url: str, engine, n: int, workdir: Path, timeout: float) -> float | None:
    log_path = workdir / "worker.log"
    proc = common.spawn(
        [str(BIN / "jobctl"), "worker", "--processes", str(PROCESSES), "--threads", str(THREADS)],
        env=env_for(url),
        log_path=log_path,
    )
    try:
        rate = wait_handled(engine, proc, n, log_path, timeout)
    finally:
        common.stop(proc)
    with engine.connect() as conn:
        statuses = dict(conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all())
        users = conn.execute(text("SELECT sum(user_count) FROM org_stats")).scalar_one()
    print(f"  handling: statuses {statuses}; users counted {users}", flush=True)
    return rate


def scenario_naive(url: str, engine, n: int, workdir: Path, timeout: float) -> float | None:
    reset(engine, redis.Redis.from_url(REDIS_URL))
    now = store.utcnow()
    event_ids = [uuid.uuid4() for _ in range(n)]
    job_ids = [uuid.uuid4() for _ in range(n)]
    bodies = [e for part in event_lists(n) for e in part]
    with engine.begin() as conn:
        conn.execute(
            insert(event_models.Event.__table__),
            [
                {"id": e, "type": "user_registered", "payload": b["payload"], "handler_jobs": [], "created_at": now}
                for e, b in zip(event_ids, bodies, strict=True)
            ],
        )  # n of each
        conn.execute(insert(models.Job.__table__), _handler_job_rows(event_ids, job_ids, now))
    broker = RedisBroker(url=REDIS_URL, middleware=[])
    for job_id in job_ids:
        broker.enqueue(
            Message(queue_name="default", actor_name="bench.naive_event", args=(str(job_id),), kwargs={}, options={})
        )
    broker.close()
    log_path = workdir / "naive.log"
    proc = common.spawn(
        [
            str(BIN / "dramatiq"),
            "bench_naive_events",
            "--path",
            str(workdir),
            "--processes",
            str(PROCESSES),
            "--threads",
            str(THREADS),
        ],
        env=env_for(url, BENCH_REDIS_URL=REDIS_URL, BENCH_DATABASE_URL=url),
        log_path=log_path,
    )
    try:
        return wait_handled(engine, proc, n, log_path, timeout)
    finally:
        common.stop(proc)


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else f"{value:{spec}}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per scenario (default 20000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients for the ingest (default 4)")
    args = parser.parse_args(argv)
    n, timeout = args.events, 60 + 0.01 * args.events
    url = common.recreate_database(BENCH_DB)
    engine = db.make_engine(url, pool_size=2)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with tempfile.TemporaryDirectory(prefix="jobrunner-bench-events-") as tmp:
            workdir = Path(tmp)
            (workdir / "bench_naive_events.py").write_text(textwrap.dedent(NAIVE_MODULE))
            reset(engine, client)
            bulk = scenario_bulk(url, n)
            reset(engine, client)
            ingest = scenario_ingest(url, n, args.clients, workdir)
            # The workers handle the warm-up post's events too.
            handling = scenario_handling(url, engine, n + LIST_SIZE, workdir, timeout)
            naive = scenario_naive(url, engine, n, workdir, timeout)
    except KeyboardInterrupt:
        return 130
    finally:
        common.stop_all()
        engine.dispose()
        client.close()
    line = "=" * 90
    print(
        f"\n{line}\nevents benchmark: {n:,} user_registered events, lists of {LIST_SIZE}, {os.cpu_count()} CPUs\n{line}"
    )
    print(
        f"ingest POST /events (1 uvicorn process, {args.clients} clients)   {fmt(ingest):>10} events/s"
        f"   (target >= {TARGET_INGEST:,.0f})"
    )
    print(f"bulk limit (Core bulk INSERT + bare sends)            {fmt(bulk):>10} events/s")
    ratio = ingest / bulk if bulk else None
    print(
        f"  ingest / bulk limit                                 {fmt(ratio, '.2f'):>10}"
        f"          (target >= {TARGET_INGEST_RATIO:.2f})"
    )
    print(f"handling, jobctl worker {PROCESSES}x{THREADS}                        {fmt(handling):>10} events/s")
    print(f"naive pattern, bare Dramatiq {PROCESSES}x{THREADS}                   {fmt(naive):>10} events/s")
    h_ratio = handling / naive if handling and naive else None
    print(f"  handling / naive                                    {fmt(h_ratio, '.2f'):>10}          (target >= 1.00)")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
