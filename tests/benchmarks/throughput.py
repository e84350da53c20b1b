"""Throughput, memory and latency of the job runner, against bare Dramatiq and a naive ORM actor.

What it measures (one worker process x 8 threads everywhere, ``dramatiq_worker_timeout`` = 10 ms,
PostgreSQL database ``jobrunner_bench`` (dropped and re-created, then migrated), Redis db 13
(flushed before each scenario)):

A. **full path**: N ``noop`` jobs created with ``jobs.store.create_job`` in a few big transactions (their
   IDs go to Redis after each commit; timed apart as "enqueue"), then ONE real worker started with
   ``jobctl worker --processes 1 --threads 8``. Throughput = N / (max(finished_at) - min(started_at)),
   read from the ``jobs`` table; the wall clock from spawning the worker until the poll (every 0.2 s)
   sees all N ``succeeded`` is printed too. The worker *child* process's RSS is sampled after ~1,000
   jobs and after all N.
B. **bare Dramatiq**: N messages to a no-op actor (Dramatiq's default middleware) in a module this
   script writes to a temporary directory, run with ``dramatiq <module> --processes 1 --threads 8``.
   To be timed, each message does ONE Redis round trip: ``RPUSH`` of its own start and end
   timestamps. Throughput = N / (last end - first start).
C. **naive pattern**: N queued rows bulk-inserted, their IDs sent to an actor (default middleware)
   that does, per message, ``with Session(engine) as s: job = s.get(Job, id); job.status = "running";
   s.commit(); job.status = "succeeded"; s.commit()``, also setting ``started_at`` / ``finished_at``
   in those same two UPDATEs so it is timed exactly like A (from the ``jobs`` table). Its engine is
   ``jobs.db.make_engine(url, pool_size=threads + 2)``: the same pool settings as the runner's, so
   only the per-job pattern differs.
Latency (unless ``--skip-latency``): with a full-path worker running, jobs created one per
   transaction through the real path (``create_job`` + commit, which sends the ID) by a pacing loop,
   at 5 jobs/s (60 jobs) and 200 jobs/s (2,000 jobs). Latency = started_at - created_at (the row's
   own timestamps); "after commit" = started_at - the moment the producer's commit (and send)
   returned.

Each scenario is repeated ``--repeat`` times; the summary shows medians. The script never asserts:
targets are printed next to the figures. Every process it starts is stopped (SIGTERM, then SIGKILL
for it and its descendants) on exit, Ctrl-C, SIGTERM or error. The figures include how much CPU
other processes used meanwhile: on a shared machine they are only as good as that is small. The
bench database is left in place for inspection.

A'. **full path on RabbitMQ** (with ``--broker amqp://...``): scenario A again, in the same run, with
   ``JOBRUNNER_BROKER_URL`` on a vhost of the script's own (``jobrunner_bench_<hex>``, made with
   ``rabbitmqctl`` on the local node the URL names and deleted at exit); the summary gives its rate
   beside A's and their ratio (and its latency beside A's, unless ``--skip-latency``).

A''. **full path on PostgreSQL** (with ``--broker postgresql``, or any ``postgresql://`` URL):
   scenario A again with the PostgreSQL broker, whose queue is the bench database itself (so the URL's
   own host and database are not used); its latency beside A's too.

B'. **bare Dramatiq on dramatiq-postgres** (with ``--dramatiq-postgres PYTHON``, a python that has
   ``dramatiq-postgres``, ``psycopg`` and ``redis`` installed: it is not one of jobrunner's
   dependencies): scenario B's no-op actor, timed the same way, on that library's own message table
   in the bench database.

``--processes 2`` runs every worker with 2 processes (x 8 threads); ``--scenarios full`` leaves B and
C out.

Run from the project root (PostgreSQL at 127.0.0.1:5432,
where it makes a database of its own; a redis-server of its own; both removed at exit)::

    .venv/bin/python tests/benchmarks/throughput.py [--jobs N] [--repeat K] [--skip-latency]
        [--broker amqp://guest:guest@127.0.0.1:5672] [--broker postgresql] [--processes N]
        [--dramatiq-postgres PYTHON] [--scenarios full,bare,naive]

Environment overrides: ``JOBRUNNER_BENCH_PG_ADMIN_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``), ``JOBRUNNER_BENCH_REDIS_URL`` (default: a
redis-server of the script's own; a Redis named here has its db flushed).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import insert, text

from jobs import db, kinds, models, store
from jobs.config import Settings
from tests.benchmarks import common
from worker import producer

try:
    import psutil
except ImportError:  # pragma: no cover - /proc fallback
    psutil = None

BENCH_DB = "jobrunner_bench"
REDIS_URL = common.redis_url(13)
BIN = Path(sys.executable).parent  # the venv's bin: jobctl and dramatiq live beside this python
PROCESSES = 1
THREADS = 8
CONSUMER_TIMEOUT_MS = 10
POLL_SECONDS = 0.2
#: Rows per transaction when enqueueing through create_job.
ENQUEUE_BATCH = 2_000
#: RSS is sampled once this many jobs have succeeded (and again at the end).
RSS_EARLY_AT = 1_000
#: Redis list the bare actor pushes "start end" timestamps onto.
SPANS_KEY = "bench:spans"

#: The scenarios, in the order they run and are reported.
SCENARIO_LABELS = (
    ("full", "A full path"),
    ("rabbitmq", "A' full, RabbitMQ"),
    ("postgres", "A'' full, PostgreSQL"),
    ("bare", "B bare Dramatiq"),
    ("dpg", "B' dramatiq-postgres"),
    ("naive", "C naive pattern"),
)

TARGETS = {
    "full/bare": 0.70,
    "full/naive": 2.0,
    "rss_mb": 10.0,
    "p99_ms": 20.0,
}


# --- processes ------------------------------------------------------------------------------------


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM only the process we started (Dramatiq's parent passes it on to its workers), wait up to
    40 s, then SIGKILL it and whatever is left of its descendants."""
    common.stop(proc, grace_seconds=40.0, signal_group=False)


def stop_all() -> None:
    """On the way out: the same, with 10 s of grace each."""
    common.stop_all(grace_seconds=10.0, signal_group=False)


def _raise_on_sigterm(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def worker_child_pid(parent_pid: int, *, timeout: float = 30.0) -> int | None:
    """The PID of the Dramatiq worker process: the child of a ``dramatiq`` parent, or the grandchild
    of ``jobctl worker`` (its supervisor runs a single-process Dramatiq master per worker process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            supervised = b"worker.supervisor" in Path(f"/proc/{parent_pid}/cmdline").read_bytes()
        except OSError:
            return None
        pids = _children(parent_pid)
        if supervised:
            pids = _children(pids[0]) if pids else []
        if pids:
            return pids[0]
        time.sleep(0.05)
    return None


def _children(pid: int) -> list[int]:
    if psutil is not None:
        try:
            kids = psutil.Process(pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []
        return sorted(k.pid for k in kids if "resource_tracker" not in " ".join(_cmdline(k)))
    try:
        text_ = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return sorted(int(p) for p in text_.split())


def _cmdline(proc: Any) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # the process may be gone, or not ours to read
        return []


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by every process (psutil only; empty without it)."""
    if psutil is None:
        return {}
    snapshot = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            snapshot[proc.pid] = (proc.info["name"] or "?", times.user + times.system)
    return snapshot


def cpu_split(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], ours: set[int], seconds: float
) -> dict[str, float]:
    """CPU used between two snapshots, in % of one CPU: by our worker, by PostgreSQL + Redis (ours and
    anyone else's), and by every other process (other work sharing the machine: it skews the figures).
    Processes that lived only between the snapshots are missed."""
    split = {"worker": 0.0, "postgres+redis": 0.0, "other": 0.0}
    for pid, (name, used) in after.items():
        delta = used - before[pid][1] if pid in before else used  # a process started since: all of it
        if pid in ours:
            split["worker"] += delta
        elif name.startswith(("postgres", "redis-server")):
            split["postgres+redis"] += delta
        elif pid != os.getpid():
            split["other"] += delta
    return {key: 100 * value / seconds for key, value in split.items()} if seconds > 0 else split


def process_tree(pid: int) -> set[int]:
    if psutil is None:
        return {pid}
    try:
        return {pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))}
    except psutil.NoSuchProcess:
        return {pid}


# --- database and redis ---------------------------------------------------------------------------


class Bench:
    """What every scenario shares: the bench database, an engine to read it, a Redis client."""

    def __init__(self, url: str, workdir: Path, timeout_seconds: float) -> None:
        self.url = url
        self.workdir = workdir
        self.timeout_seconds = timeout_seconds
        self.engine = db.make_engine(url, pool_size=2, application_name="jobrunner-bench")
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.redis.ping()

    #: The broker of scenario A (Redis, or the RabbitMQ vhost of A').
    broker_url: str = REDIS_URL
    #: The script's own RabbitMQ vhost (``--broker``), if any.
    vhost: Any = None

    def reset(self) -> None:
        """Empty the job tables, flush the bench Redis db and purge the bench vhost's queue."""
        self.redis.flushdb()
        if self.vhost is not None:
            self.vhost.flush(["default"])
        with self.engine.begin() as conn:
            conn.execute(text("TRUNCATE jobs CASCADE"))  # and every table referencing it

    def vacuum(self) -> None:
        """Fresh statistics and visibility map after a bulk load, so autovacuum does not start mid-run."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE jobs"))

    def count_succeeded(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM jobs WHERE status = 'succeeded'")).scalar_one()

    def counts_by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status")).all()
        return {status: count for status, count in rows}

    def span(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT min(started_at), max(finished_at) FROM jobs")).one()
        return row[0], row[1]

    def worker_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBRUNNER_", "dramatiq_"))}
        env.update(extra)
        return env

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()


@dataclasses.dataclass
class Run:
    """One scenario's figures."""

    name: str
    n: int
    done: int = 0
    enqueue_seconds: float | None = None
    busy_seconds: float | None = None  # first start -> last finish, as the worker recorded them
    wall_seconds: float | None = None  # spawn -> poll sees all done
    boot_seconds: float | None = None  # spawn -> first job started
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    rss_early: tuple[int, float] | None = None  # (jobs done when sampled, MiB)
    rss_end: tuple[int, float] | None = None
    rss_peak: float | None = None
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)  # % of one CPU while the jobs ran
    note: str = ""

    @property
    def rate(self) -> float | None:
        if not self.busy_seconds or self.done < self.n:
            return None
        return self.n / self.busy_seconds


def wait_until_done(
    bench: Bench,
    proc: subprocess.Popen[bytes],
    run: Run,
    count: Callable[[], int],
    *,
    spawned_at: float,
    rss_pid: int | None = None,
    log_path: Path,
) -> None:
    """Poll ``count`` every 0.2 s until it reaches ``run.n`` (or the worker dies, or time runs out)."""
    deadline = spawned_at + bench.timeout_seconds
    peak = 0.0
    cpu_before: tuple[float, dict[int, tuple[str, float]]] | None = None
    while True:
        done = count()
        if cpu_before is None and done > 0:
            cpu_before = (time.monotonic(), cpu_snapshot())
        if rss_pid is not None:
            rss = common.rss_mb(rss_pid)
            if rss is not None:
                peak = max(peak, rss)
                if run.rss_early is None and done >= min(RSS_EARLY_AT, run.n):
                    run.rss_early = (done, rss)
                if done >= run.n:
                    run.rss_end = (done, rss)
        if done >= run.n:
            run.wall_seconds = time.time() - spawned_at
            if cpu_before is not None and psutil is not None:
                run.cpu = cpu_split(
                    cpu_before[1], cpu_snapshot(), process_tree(proc.pid), time.monotonic() - cpu_before[0]
                )
            break
        if proc.poll() is not None:
            run.note = f"worker exited early with code {proc.returncode}"
            print(f"  ! {run.note}; log tail:\n{common.log_tail(log_path)}", flush=True)
            break
        if time.time() > deadline:
            run.note = f"timed out after {bench.timeout_seconds:.0f} s with {done}/{run.n} done"
            print(f"  ! {run.note}; log tail:\n{common.log_tail(log_path)}", flush=True)
            break
        time.sleep(POLL_SECONDS)
    run.done = done
    if rss_pid is not None and peak:
        run.rss_peak = peak


# --- scenario A: the full path --------------------------------------------------------------------


def runner_settings(bench: Bench) -> Settings:
    return Settings(database_url=bench.url, broker_url=bench.broker_url, consumer_timeout_ms=CONSUMER_TIMEOUT_MS)


def runner_env(bench: Bench) -> dict[str, str]:
    return bench.worker_env(
        JOBRUNNER_DATABASE_URL=bench.url,
        JOBRUNNER_BROKER_URL=bench.broker_url,
        JOBRUNNER_CONSUMER_TIMEOUT_MS=str(CONSUMER_TIMEOUT_MS),
    )


def make_producer(bench: Bench) -> tuple[db.Database, Any]:
    """A database whose sessions send job IDs to the bench broker after commit (like the API's)."""
    settings = runner_settings(bench)
    broker = producer.make_broker(settings)
    database = db.make_database(
        bench.url,
        pool_size=2,
        sender=producer.make_sender(broker),
        registry=kinds.load_registry(settings),
        application_name="jobrunner-bench-producer",
    )
    return database, broker


def start_runner_worker(bench: Bench, log_path: Path) -> tuple[subprocess.Popen[bytes], float]:
    spawned_at = time.time()
    proc = common.spawn(
        [str(BIN / "jobctl"), "worker", "--processes", str(PROCESSES), "--threads", str(THREADS)],
        env=runner_env(bench),
        log_path=log_path,
    )
    return proc, spawned_at


def _record_span(bench: Bench, run: Run, spawned_at: float) -> Run:
    """Fill ``run`` with the first start to last finish the worker recorded, and the statuses."""
    first, last = bench.span()
    if first and last:
        run.busy_seconds = (last - first).total_seconds()
        run.boot_seconds = first.timestamp() - spawned_at
    run.statuses = bench.counts_by_status()
    return run


def scenario_full(bench: Bench, n: int, index: int, name: str = "A full path") -> Run:
    run = Run(name, n)
    bench.reset()
    database, broker = make_producer(bench)
    try:
        started = time.perf_counter()
        for offset in range(0, n, ENQUEUE_BATCH):
            with db.session_scope(database.sessions) as session:
                for _ in range(min(ENQUEUE_BATCH, n - offset)):
                    store.create_job(session, "noop")
        run.enqueue_seconds = time.perf_counter() - started
    finally:
        database.dispose()
        broker.close()
    on_rabbitmq = bench.broker_url.startswith("amqp")
    on_postgres = bench.broker_url == bench.url
    if on_postgres:
        where = "no messages: the jobs table is the queue"
    else:
        queued = bench.vhost.count("default") if on_rabbitmq else bench.redis.hlen("dramatiq:default.msgs")
        where = f"{queued} messages in {'RabbitMQ' if on_rabbitmq else 'Redis'}"
    print(
        f"  enqueued {n} jobs in {run.enqueue_seconds:.2f} s ({n / run.enqueue_seconds:,.0f}/s); {where}",
        flush=True,
    )
    bench.vacuum()

    kind = "rabbitmq-" if on_rabbitmq else "postgres-" if on_postgres else ""
    log_path = bench.workdir / f"full-{kind}{index}.log"
    proc, spawned_at = start_runner_worker(bench, log_path)
    try:
        child = worker_child_pid(proc.pid)
        if child is None:
            print("  ! could not find the worker child process: RSS not sampled", flush=True)
        wait_until_done(
            bench, proc, run, bench.count_succeeded, spawned_at=spawned_at, rss_pid=child, log_path=log_path
        )
    finally:
        stop(proc)
    return _record_span(bench, run, spawned_at)


def scenario_full_rabbitmq(bench: Bench, n: int, index: int) -> Run:
    """Scenario A with RabbitMQ (the script's vhost) as the broker."""
    bench.broker_url = bench.vhost.url
    try:
        return scenario_full(bench, n, index, name="A' full, RabbitMQ")
    finally:
        bench.broker_url = REDIS_URL


def scenario_full_postgres(bench: Bench, n: int, index: int) -> Run:
    """Scenario A with the PostgreSQL broker (the bench database itself) as the broker."""
    bench.broker_url = bench.url
    try:
        return scenario_full(bench, n, index, name="A'' full, PostgreSQL")
    finally:
        bench.broker_url = REDIS_URL


# --- scenarios B and C: Dramatiq without the runner -----------------------------------------------

BARE_MODULE = '''
"""Bare Dramatiq: a no-op actor; default middleware. Written by tests/benchmarks/throughput.py."""
import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)
_stats = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@dramatiq.actor(actor_name="bench.bare", queue_name="default")
def bare(seq):
    start = time.time()
    # The job itself: nothing. Below, the one Redis round trip that times it.
    _stats.rpush("%(key)s", "%%.6f %%.6f" %% (start, time.time()))
'''

NAIVE_MODULE = '''
"""The naive pattern: one ORM session per message, get, two commits. Written by
tests/benchmarks/throughput.py."""
import datetime as dt
import os
import uuid

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.orm import Session

from jobs.db import make_engine
from jobs.models import Job

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)
engine = make_engine(os.environ["BENCH_DATABASE_URL"], pool_size=int(os.environ["BENCH_POOL_SIZE"]),
                     application_name="jobrunner-bench-naive")


def _now():
    return dt.datetime.now(dt.timezone.utc)


@dramatiq.actor(actor_name="bench.naive", queue_name="default")
def naive(job_id):
    with Session(engine) as s:
        job = s.get(Job, uuid.UUID(job_id))
        job.status = "running"
        job.started_at = _now()
        s.commit()
        job.status = "succeeded"
        job.finished_at = _now()
        s.commit()
'''


def send_messages(actor_name: str, args_list: Sequence[tuple[Any, ...]]) -> float:
    """Enqueue one message per args tuple on the bench Redis (a sending-only broker); returns seconds."""
    broker = RedisBroker(url=REDIS_URL, middleware=[])
    try:
        started = time.perf_counter()
        for args in args_list:
            broker.enqueue(Message(queue_name="default", actor_name=actor_name, args=args, kwargs={}, options={}))
        return time.perf_counter() - started
    finally:
        broker.close()


def start_dramatiq(bench: Bench, module: str, log_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], float]:
    spawned_at = time.time()
    proc = common.spawn(
        [
            str(BIN / "dramatiq"),
            module,
            "--path",
            str(bench.workdir),
            "--processes",
            str(PROCESSES),
            "--threads",
            str(THREADS),
        ],
        env=bench.worker_env(dramatiq_worker_timeout=str(CONSUMER_TIMEOUT_MS), BENCH_REDIS_URL=REDIS_URL, **env),
        log_path=log_path,
    )
    return proc, spawned_at


def scenario_bare(bench: Bench, n: int, index: int) -> Run:
    run = Run("B bare Dramatiq", n)
    bench.reset()
    run.enqueue_seconds = send_messages("bench.bare", [(i,) for i in range(n)])
    log_path = bench.workdir / f"bare-{index}.log"
    proc, spawned_at = start_dramatiq(bench, "bench_bare", log_path)
    try:
        wait_until_done(bench, proc, run, lambda: bench.redis.llen(SPANS_KEY), spawned_at=spawned_at, log_path=log_path)
    finally:
        stop(proc)
    spans = [tuple(map(float, raw.split())) for raw in bench.redis.lrange(SPANS_KEY, 0, -1)]
    if spans:
        first = min(start for start, _ in spans)
        run.busy_seconds = max(end for _, end in spans) - first
        run.boot_seconds = first - spawned_at
    run.statuses = {"spans recorded": len(spans)}
    return run


DPG_MODULE = '''
"""Bare Dramatiq on dramatiq-postgres (its own message table, LISTEN/NOTIFY): scenario B's no-op
actor timed the same way. Written by tests/benchmarks/throughput.py; run by --dramatiq-postgres's
python. ``python bench_dpg.py N`` creates its schema and enqueues N messages."""
import os
import sys
import time

import dramatiq
import psycopg
import redis
from dramatiq_postgres import PostgresBroker, schema

URL = os.environ["BENCH_DPG_URL"]
broker = PostgresBroker(url=URL, results=False)
dramatiq.set_broker(broker)
_stats = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


@dramatiq.actor(actor_name="bench.bare", queue_name="default")
def bare(seq):
    start = time.time()
    _stats.rpush("%(key)s", "%%.6f %%.6f" %% (start, time.time()))


if __name__ == "__main__":
    with psycopg.connect(URL, autocommit=True) as conn, conn.cursor() as curs:
        curs.execute("DROP SCHEMA IF EXISTS dramatiq CASCADE")
        schema.init(curs)
    started = time.perf_counter()
    for i in range(int(sys.argv[1])):
        bare.send(i)
    print("%%.6f" %% (time.perf_counter() - started))
    broker.close()
'''


def scenario_dpg(bench: Bench, n: int, index: int, python: str) -> Run:
    run = Run("B' dramatiq-postgres", n)
    bench.reset()
    url = bench.url.replace("postgresql+psycopg://", "postgresql://")
    env = bench.worker_env(
        dramatiq_worker_timeout=str(CONSUMER_TIMEOUT_MS), BENCH_REDIS_URL=REDIS_URL, BENCH_DPG_URL=url
    )
    sent = subprocess.run(
        [python, str(bench.workdir / "bench_dpg.py"), str(n)], env=env, capture_output=True, text=True, check=True
    )
    run.enqueue_seconds = float(sent.stdout.split()[-1])
    log_path = bench.workdir / f"dpg-{index}.log"
    spawned_at = time.time()
    proc = common.spawn(
        [
            str(Path(python).parent / "dramatiq"),
            "bench_dpg",
            "--path",
            str(bench.workdir),
            "--processes",
            str(PROCESSES),
            "--threads",
            str(THREADS),
        ],
        env=env,
        log_path=log_path,
    )
    try:
        wait_until_done(bench, proc, run, lambda: bench.redis.llen(SPANS_KEY), spawned_at=spawned_at, log_path=log_path)
    finally:
        stop(proc)
    spans = [tuple(map(float, raw.split())) for raw in bench.redis.lrange(SPANS_KEY, 0, -1)]
    if spans:
        first = min(start for start, _ in spans)
        run.busy_seconds = max(end for _, end in spans) - first
        run.boot_seconds = first - spawned_at
    run.statuses = {"spans recorded": len(spans)}
    return run


def scenario_naive(bench: Bench, n: int, index: int) -> Run:
    run = Run("C naive pattern", n)
    bench.reset()
    now = store.utcnow()
    ids = [uuid.uuid4() for _ in range(n)]
    rows = [
        {
            "id": job_id,
            "kind": "noop",
            "queue": "default",
            "args": {},
            "status": "queued",
            "attempts": 0,
            "max_attempts": 3,
            "created_at": now,
            "enqueued_at": now,
            "replay_count": 0,
        }
        for job_id in ids
    ]
    with bench.engine.begin() as conn:
        for offset in range(0, n, ENQUEUE_BATCH):
            conn.execute(insert(models.Job.__table__), rows[offset : offset + ENQUEUE_BATCH])
    run.enqueue_seconds = send_messages("bench.naive", [(str(job_id),) for job_id in ids])
    bench.vacuum()
    log_path = bench.workdir / f"naive-{index}.log"
    proc, spawned_at = start_dramatiq(
        bench, "bench_naive", log_path, BENCH_DATABASE_URL=bench.url, BENCH_POOL_SIZE=str(THREADS + 2)
    )
    try:
        wait_until_done(bench, proc, run, bench.count_succeeded, spawned_at=spawned_at, log_path=log_path)
    finally:
        stop(proc)
    return _record_span(bench, run, spawned_at)


# --- latency --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Latency:
    rate: float
    n: int
    broker: str = "Redis"
    done: int = 0
    achieved_rate: float = 0.0
    late_sends: int = 0  # sends that started more than 5 ms behind schedule
    latencies_ms: list[float] = dataclasses.field(default_factory=list)  # started_at - created_at
    after_commit_ms: list[float] = dataclasses.field(default_factory=list)  # started_at - commit returned
    note: str = ""


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def scenario_latency(bench: Bench, phases: Sequence[tuple[float, int]]) -> list[Latency]:
    bench.reset()
    database, broker = make_producer(bench)
    log_path = bench.workdir / f"latency-{bench.broker_url.split(':')[0]}.log"
    proc, _ = start_runner_worker(bench, log_path)
    results = []
    try:
        # Warm up: the worker is booted, its pool connected, and the producer's too.
        warm = [_create_one(database)[0] for _ in range(20)]
        if _wait_for(bench, proc, warm, log_path) < len(warm):
            return [Latency(rate, n, note="the worker did not run the warm-up jobs") for rate, n in phases]
        for rate, n in phases:
            print(f"  latency at {rate:g} jobs/s: {n} jobs over {n / rate:.0f} s ...", flush=True)
            results.append(_paced(bench, proc, database, rate, n, log_path))
            time.sleep(0.5)
    finally:
        stop(proc)
        database.dispose()
        broker.close()
    return results


def _create_one(database: db.Database) -> tuple[uuid.UUID, float]:
    with db.session_scope(database.sessions) as session:
        job_id = store.create_job(session, "noop").id
    return job_id, time.time()


def _wait_for(bench: Bench, proc: subprocess.Popen[bytes], ids: list[uuid.UUID], log_path: Path) -> int:
    deadline = time.time() + bench.timeout_seconds
    query = text("SELECT count(*) FROM jobs WHERE status = 'succeeded' AND id = ANY(:ids)")
    while True:
        with bench.engine.connect() as conn:
            done = conn.execute(query, {"ids": ids}).scalar_one()
        if done >= len(ids):
            return done
        if proc.poll() is not None or time.time() > deadline:
            print(
                f"  ! latency: {done}/{len(ids)} done, worker rc={proc.poll()}; log tail:\n{common.log_tail(log_path)}",
                flush=True,
            )
            return done
        time.sleep(POLL_SECONDS)


def _paced(
    bench: Bench, proc: subprocess.Popen[bytes], database: db.Database, rate: float, n: int, log_path: Path
) -> Latency:
    broker = "RabbitMQ" if bench.broker_url.startswith("amqp") else "Redis"
    result = Latency(rate, n, broker="PostgreSQL" if bench.broker_url == bench.url else broker)
    committed: dict[uuid.UUID, float] = {}
    interval = 1.0 / rate
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.005:
            result.late_sends += 1
        job_id, at = _create_one(database)
        committed[job_id] = at
    result.achieved_rate = n / (time.perf_counter() - t0) if n > 1 else rate
    ids = list(committed)
    result.done = _wait_for(bench, proc, ids, log_path)
    with bench.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, created_at, started_at FROM jobs WHERE id = ANY(:ids) AND started_at IS NOT NULL"),
            {"ids": ids},
        ).all()
    for job_id, created_at, started_at in rows:
        result.latencies_ms.append((started_at - created_at).total_seconds() * 1000)
        result.after_commit_ms.append((started_at.timestamp() - committed[job_id]) * 1000)
    return result


# --- report ---------------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, spec: str = ",.0f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("  [meets target]" if ok else "  [MISSES target]")


def print_run(run: Run) -> None:
    print(
        f"  {run.name}: {run.done}/{run.n} done; busy {_fmt(run.busy_seconds, '.3f', ' s')} -> "
        f"{_fmt(run.rate, ',.0f', ' jobs/s')}; wall {_fmt(run.wall_seconds, '.2f', ' s')} "
        f"(boot {_fmt(run.boot_seconds, '.2f', ' s')}); statuses {run.statuses}"
        + (
            f"; RSS {run.rss_early[1]:.1f} MiB @ {run.rss_early[0]} -> {run.rss_end[1]:.1f} MiB @ {run.rss_end[0]}"
            if run.rss_early and run.rss_end
            else ""
        )
        + ("; CPU % of one core: " + ", ".join(f"{k} {v:.0f}" for k, v in run.cpu.items()) if run.cpu else "")
        + (f"; NOTE {run.note}" if run.note else ""),
        flush=True,
    )


def print_summary(args: argparse.Namespace, runs: dict[str, list[Run]], latency: list[Latency]) -> None:
    line = "=" * 100
    print(
        f"\n{line}\njobrunner throughput benchmark: {args.jobs:,} jobs per scenario, {args.repeat} run(s) each "
        f"(medians), {PROCESSES} worker process(es) x {THREADS} threads, consumer timeout {CONSUMER_TIMEOUT_MS} ms, "
        f"{os.cpu_count()} CPUs\n{line}"
    )
    header = (
        f"{'scenario':<21} {'jobs/s':>10} {'busy s':>8} {'wall s':>8} {'boot s':>7} {'enqueue s':>10}  "
        "runs (jobs/s)  statuses (last run)"
    )
    print(header)
    print("-" * len(header))
    rates: dict[str, float | None] = {}
    for key, label in SCENARIO_LABELS:
        rs = runs[key]
        if not rs:
            continue
        rates[key] = _median([r.rate for r in rs])
        per_run = ", ".join(_fmt(r.rate) for r in rs)
        print(
            f"{label:<21} {_fmt(rates[key]):>10} {_fmt(_median([r.busy_seconds for r in rs]), '.3f'):>8} "
            f"{_fmt(_median([r.wall_seconds for r in rs]), '.2f'):>8} "
            f"{_fmt(_median([r.boot_seconds for r in rs]), '.2f'):>7} "
            f"{_fmt(_median([r.enqueue_seconds for r in rs]), '.2f'):>10}  {per_run:<13}  {rs[-1].statuses}"
            + (f"  NOTE: {rs[-1].note}" if rs[-1].note else "")
        )
    print("  jobs/s = N / (last finish - first start) as the worker recorded them: A and C from jobs.started_at/")
    print("  finished_at; B from the actor's own time.time() pair, sent with ONE Redis RPUSH per message (its only")
    print("  work). wall = spawn -> poll (0.2 s) saw all done, boot included. enqueue: A create_job in")
    print(
        f"  {ENQUEUE_BATCH:,}-row transactions + send after commit; B/C broker.enqueue per message "
        "(C: rows bulk-inserted first)."
    )

    print("\nCPU while the jobs ran, % of one core (median of runs; 'other' = processes that are not this")
    print("benchmark's, PostgreSQL or Redis: anything above a few % means a shared machine skewed the figures)")
    for key, label in SCENARIO_LABELS:
        cpus = [r.cpu for r in runs[key] if r.cpu]
        if cpus:
            print(f"  {label:<21} " + "   ".join(f"{part} {_median([c[part] for c in cpus]):.0f}" for part in cpus[0]))

    print("\nratios (of the median rates; in brackets, each run's ratio to the runs beside it)")
    for name, other in (("full/bare", "bare"), ("full/naive", "naive")):
        ratio = rates["full"] / rates[other] if rates["full"] and rates[other] else None
        # Every scenario ran args.repeat times (a run that failed ended the benchmark before this).
        per_run = [
            a.rate / b.rate if a.rate and b.rate else None for a, b in zip(runs["full"], runs[other], strict=True)
        ]
        target = TARGETS[name]
        verdict = _verdict(None if ratio is None else ratio >= target)
        print(
            f"  {name:<11} {_fmt(ratio, '.2f'):>6}   (target >= {target:.2f}){verdict}"
            f"   [{', '.join(_fmt(r, '.2f') for r in per_run)}]"
        )
    for name, one, other, what in (
        ("rabbit/redis", "rabbitmq", "full", "A' RabbitMQ / A Redis"),
        ("pg/redis", "postgres", "full", "A'' PostgreSQL / A Redis"),
        ("pg/dpg", "postgres", "dpg", "A'' PostgreSQL / B' bare dramatiq-postgres"),
        ("dpg/bare", "dpg", "bare", "B' dramatiq-postgres / B bare Dramatiq on Redis"),
    ):
        if not runs[one] or not runs[other]:
            continue
        ratio = rates[one] / rates[other] if rates[one] and rates[other] else None
        per_run = [a.rate / b.rate if a.rate and b.rate else None for a, b in zip(runs[one], runs[other], strict=True)]
        print(
            f"  {name:<11} {_fmt(ratio, '.2f'):>6}   ({what}, same run)"
            f"   [{', '.join(_fmt(r, '.2f') for r in per_run)}]"
        )

    print("\nworker child RSS, scenario A (MiB)")
    for i, r in enumerate(runs["full"] + runs["postgres"], 1):
        if r.rss_early and r.rss_end:
            growth = r.rss_end[1] - r.rss_early[1]
            print(
                f"  run {i}: {r.rss_early[1]:.1f} after {r.rss_early[0]:,} jobs -> {r.rss_end[1]:.1f} after "
                f"{r.rss_end[0]:,} jobs: {growth:+.1f} (peak {_fmt(r.rss_peak, '.1f')}; target within "
                f"{TARGETS['rss_mb']:.0f}){_verdict(abs(growth) <= TARGETS['rss_mb'])}"
            )
        else:
            print(f"  run {i}: not sampled")

    if latency:
        print(
            "\nenqueue-to-start latency, full path (ms): started_at - created_at  "
            "[after commit: started_at - commit returned]"
        )
        print(
            f"  {'broker':<10} {'rate':>8} {'jobs':>6} {'sent/s':>7} {'late':>5} {'p50':>7} {'p95':>7} {'p99':>7} "
            f"{'max':>7}   {'p50':>6} {'p99':>6}"
        )
        for lat in latency:
            if not lat.latencies_ms:
                print(f"  {lat.broker:<10} {lat.rate:>6g}/s {lat.n:>6} no data {lat.note}")
                continue
            p = {q: percentile(lat.latencies_ms, q) for q in (50, 95, 99)}
            c = {q: percentile(lat.after_commit_ms, q) for q in (50, 99)}
            print(
                f"  {lat.broker:<10} {lat.rate:>6g}/s {lat.done:>6} {lat.achieved_rate:>7.1f} {lat.late_sends:>5} "
                f"{p[50]:>7.1f} {p[95]:>7.1f} {p[99]:>7.1f} {max(lat.latencies_ms):>7.1f}   "
                f"[{c[50]:>6.1f} {c[99]:>6.1f}]"
                f"  (target p99 <= {TARGETS['p99_ms']:.0f}){_verdict(p[99] <= TARGETS['p99_ms'])}"
            )
        print("  late = sends that began > 5 ms behind the pacing schedule (the producer shares the 2 CPUs).")
    print(line)


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=10_000, help="jobs (messages) per throughput scenario (default 10000)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each throughput scenario; medians are reported")
    parser.add_argument("--skip-latency", action="store_true", help="skip the enqueue-to-start latency runs")
    parser.add_argument(
        "--broker",
        action="append",
        default=[],
        help="also run scenario A on this broker (repeatable): a RabbitMQ node (amqp://user:pass@host:port), on a "
        "vhost of the script's own there; or postgresql (any postgresql:// URL), the PostgreSQL broker on the bench "
        "database",
    )
    parser.add_argument("--processes", type=int, default=1, help="worker processes (default 1; 8 threads each)")
    parser.add_argument(
        "--dramatiq-postgres",
        metavar="PYTHON",
        help="a python with dramatiq-postgres, psycopg and redis: runs scenario B' on dramatiq-postgres",
    )
    parser.add_argument(
        "--scenarios", default="full,bare,naive", help="which of full, bare, naive to run (default all)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="longest wait for one scenario, seconds (default 60 + 0.03 s per job)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.repeat < 1:
        parser.error("--jobs and --repeat must be at least 1")
    for broker in args.broker:
        if not broker.startswith(("amqp://", "amqps://", "postgresql")):
            parser.error("--broker takes a RabbitMQ URL (amqp://...) or postgresql; Redis is always measured")
    args.rabbitmq = next((b for b in args.broker if b.startswith("amqp")), None)
    args.postgres = any(b.startswith("postgresql") for b in args.broker)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    global PROCESSES
    args = parse_args(argv)
    PROCESSES = args.processes
    wanted = set(args.scenarios.split(","))
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    timeout = args.timeout if args.timeout is not None else 60 + 0.03 * args.jobs
    runs: dict[str, list[Run]] = {key: [] for key, _ in SCENARIO_LABELS}
    latency: list[Latency] = []
    bench = None
    try:
        with tempfile.TemporaryDirectory(prefix="jobrunner-bench-") as tmp:
            workdir = Path(tmp)
            (workdir / "bench_bare.py").write_text(textwrap.dedent(BARE_MODULE % {"key": SPANS_KEY}))
            (workdir / "bench_naive.py").write_text(textwrap.dedent(NAIVE_MODULE))
            (workdir / "bench_dpg.py").write_text(textwrap.dedent(DPG_MODULE % {"key": SPANS_KEY}))
            print(f"creating database {BENCH_DB}_{common.RUN_ID} and migrating it; Redis {REDIS_URL}", flush=True)
            bench = Bench(common.recreate_database(BENCH_DB, common.PG_ADMIN_URL), workdir, timeout)
            scenarios: list[tuple[str, Callable[[Bench, int, int], Run]]] = [("full", scenario_full)]
            if args.rabbitmq:
                from tests import rabbitmq  # pika, only when asked for

                bench.vhost = rabbitmq.RabbitVhost(args.rabbitmq, prefix="jobrunner_bench")
                print(f"RabbitMQ: vhost {bench.vhost.name} on {args.rabbitmq} (deleted at exit)", flush=True)
                scenarios.append(("rabbitmq", scenario_full_rabbitmq))
            if args.postgres:
                scenarios.append(("postgres", scenario_full_postgres))
            if "full" not in wanted:
                scenarios = []
            if "bare" in wanted:
                scenarios.append(("bare", scenario_bare))
            if args.dramatiq_postgres:
                scenarios.append(("dpg", lambda b, n, i: scenario_dpg(b, n, i, args.dramatiq_postgres)))
            if "naive" in wanted:
                scenarios.append(("naive", scenario_naive))
            for i in range(1, args.repeat + 1):
                for key, scenario in scenarios:
                    print(f"[run {i}/{args.repeat}] scenario {key}: {args.jobs:,} jobs", flush=True)
                    run = scenario(bench, args.jobs, i)
                    runs[key].append(run)
                    print_run(run)
            if not args.skip_latency:
                print("latency: full-path worker, jobs created one per transaction at a steady rate", flush=True)
                latency = scenario_latency(bench, [(5.0, 60), (200.0, 2_000)])
                for other in ([bench.vhost.url] if bench.vhost is not None else []) + (
                    [bench.url] if args.postgres else []
                ):
                    bench.broker_url = other
                    latency += scenario_latency(bench, [(5.0, 60), (200.0, 2_000)])
                    bench.broker_url = REDIS_URL
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the processes this script started", flush=True)
        return 130
    finally:
        stop_all()
        if bench is not None:
            bench.close()
            if bench.vhost is not None:
                bench.vhost.close()
    print_summary(args, runs, latency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
