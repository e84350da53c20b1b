"""Throughput, memory and latency of the job runner, against bare Dramatiq, a naive ORM actor and Oban.

What it measures (``--processes`` worker processes, default 1, x 8 threads everywhere,
``dramatiq_worker_timeout`` = 10 ms, PostgreSQL database ``jobrunner_bench`` (dropped and re-created,
then migrated), Redis db 13 (flushed before each scenario)):

A. **full path**: N ``noop`` jobs created with ``jobs.store.create_job`` in a few big transactions (their
   IDs go to Redis after each commit; timed apart as "enqueue"), then ONE real worker started with
   ``jobctl worker --processes P --threads 8``. Throughput = N / (max(finished_at) - min(started_at)),
   read from the ``jobs`` table; the wall clock from spawning the worker until the poll (every 0.2 s)
   sees all N ``succeeded`` is printed too. The worker *child* process's RSS is sampled after ~1,000
   jobs and after all N.
B. **bare Dramatiq**: N messages to a no-op actor (Dramatiq's default middleware) in a module this
   script writes to a temporary directory, run with ``dramatiq <module> --processes P --threads 8``.
   To be timed, each message does ONE Redis round trip: ``RPUSH`` of its own start and end
   timestamps. Throughput = N / (last end - first start).
C. **naive pattern**: N queued rows bulk-inserted, their IDs sent to an actor (default middleware)
   that does, per message, ``with Session(engine) as s: job = s.get(Job, id); job.status = "running";
   s.commit(); job.status = "succeeded"; s.commit()``, also setting ``started_at`` / ``finished_at``
   in those same two UPDATEs so it is timed exactly like A (from the ``jobs`` table). Its engine is
   ``jobs.db.make_engine(url, pool_size=threads + 2)``: the same pool settings as the runner's, so
   only the per-job pattern differs.
A' **async noop** (with ``--async-noop``): A with an ``async def`` no-op kind (``bench.async_noop``, a
   module this script writes, loaded with ``JOBRUNNER_JOB_MODULES``): the worker runs it on Dramatiq's
   event loop thread with an ``AsyncSession`` (psycopg async), the success fenced in that session.
A (observe=MODE) (with ``--observe``): A once per observability mode listed, alternating within each
   repeat: ``metrics`` is the runner as shipped (A itself: the attempt counters kept by migration
   0011's trigger), ``off`` the same with that trigger disabled, ``tracing`` as shipped plus
   OpenTelemetry tracing in the worker, exporting over OTLP/HTTP to a sink in this process that
   answers 200 to everything. The summary shows each mode's median rate and its ratio to B.
A (BROKER) (with ``--broker URL``, which may be repeated): A again, in the same run, with
   ``JOBRUNNER_BROKER_URL`` on a space of the script's own on that broker: for ``amqp://...``
   (RabbitMQ) a vhost ``jobrunner_bench_<hex>``, made with ``rabbitmqctl`` on the local node the URL
   names and deleted at exit; for ``postgresql`` (or any ``postgresql://`` URL: its own host and
   database are not used) the PostgreSQL broker on the bench database itself, whose ``jobs`` table is
   the queue (label ``A (postgres)``). The summary gives its rate beside A's and their ratio (and its latency
   beside A's, unless ``--skip-latency``).
O. **Oban for Python** (unless ``--skip-oban``; the fastest PostgreSQL-only peer: asyncio, claims
   and acks in batches). It needs Python >= 3.12: ``JOBRUNNER_BENCH_OBAN_PYTHON``, else ``python3.12``
   or newer on PATH (one that runs: a pyenv shim may not), else the newest of pyenv's installed
   versions; with it the script builds the venv ``var/bench-oban-venv`` and ``pip install``s ``oban``
   there (``JOBRUNNER_BENCH_OBAN_SPEC`` to pin one: ``oban==0.7.0``), once: the venv is reused after.
   Without such a Python, or if the install fails, O is skipped with a message saying why. O runs in
   a database of its own on the bench PostgreSQL (``jobrunner_bench_oban_<run>``, schema made by
   ``oban install``): N jobs of a no-op ``@worker`` inserted with Oban's ``enqueue_many``, 2,000 per
   statement (timed apart, as "enqueue"), then ``--processes`` processes of ``oban start --queues
   default:8`` (the CLI as shipped: uvloop, its default pool and logging; Oban runs one process per
   command, so a small launcher starts P of them). Throughput = N / (max(completed_at) -
   min(attempted_at)), read from ``oban_jobs``; RSS and CPU sampled as for A (RSS: the first process).
   The summary gives full/oban and each ``--broker``/oban.
Latency (unless ``--skip-latency``): with a full-path worker running, jobs created one per
   transaction through the real path (``create_job`` + commit, which sends the ID) by a pacing loop,
   at 5 jobs/s (60 jobs) and 200 jobs/s (2,000 jobs), on Redis and then on each ``--broker``.
   Latency = started_at - created_at (the row's own timestamps); "after commit" = started_at - the
   moment the producer's commit (and send) returned.

Each scenario is repeated ``--repeat`` times; the summary shows medians. The script never asserts:
targets are printed next to the figures. Every process it starts is stopped (SIGTERM, then SIGKILL
for it and its descendants) on exit, Ctrl-C, SIGTERM or error. The figures include how much CPU
other processes used meanwhile: on a shared machine they are only as good as that is small. The
bench database is left in place for inspection.

Run from the project root (PostgreSQL at 127.0.0.1:5432,
where it makes a database of its own; a redis-server of its own; both removed at exit)::

    .venv/bin/python tests/benchmarks/throughput.py [--jobs N] [--repeat K] [--skip-latency] [--async-noop]
        [--observe off,metrics,tracing] [--skip-naive] [--broker amqp://guest:guest@127.0.0.1:5672]
        [--broker postgresql] [--processes N] [--skip-oban]

``--processes 2`` runs every worker (A, B, C and O alike, so the ratios stay like for like) with 2
processes of 8 threads (O: 2 processes of 8 concurrent jobs). For every scenario the summary prints
the worker's CPU time per job (all its processes, over the jobs run while it was sampled), and
PostgreSQL's and Redis's (every such process on the machine: ours and anyone else's).

Environment overrides: ``JOBRUNNER_BENCH_PG_ADMIN_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``), ``JOBRUNNER_BENCH_REDIS_URL`` (default: a
redis-server of the script's own; a Redis named here has its db flushed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import http.server
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dramatiq
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

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
#: Worker processes of every scenario's worker (``--processes``).
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

TARGETS = {
    "full/bare": 0.85,
    "full/oban": 1.0,  # ahead of Oban for Python (issue 17)
    "postgres/oban": 1.0,  # the PostgreSQL broker at least equal to it (issue 19)
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
        return list(proc.cmdline())
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


@dataclasses.dataclass
class BrokerSpace:
    """A space of the script's own on a broker other than the bench Redis (``--broker``), where
    scenario A runs again."""

    name: str  # "rabbitmq" (a second of the same kind: "rabbitmq-2")
    url: str  # what JOBRUNNER_BROKER_URL gets
    where: str  # for the log: what was made, where
    flush: Callable[[], None]  # drop every message of the space
    count: Callable[[], int]  # messages (jobs, on PostgreSQL) waiting on the default queue
    close: Callable[[], None]  # remove the space


def rabbitmq_space(bench: Bench, node_url: str) -> BrokerSpace:
    """A vhost of the script's own on the RabbitMQ node of ``node_url`` (deleted by ``close``)."""
    from tests import rabbitmq  # pika, only when asked for

    vhost = rabbitmq.RabbitVhost(node_url, prefix="jobrunner_bench")
    return BrokerSpace(
        name="rabbitmq",
        url=vhost.url,
        where=f"vhost {vhost.name} on {node_url} (removed at exit)",
        flush=lambda: vhost.flush(["default"]),
        count=lambda: vhost.count("default"),
        close=vhost.close,
    )


def postgres_space(bench: Bench, _url: str) -> BrokerSpace:
    """The PostgreSQL broker on the bench database itself: its ``jobs`` table is the queue, so there is
    nothing to make, flush (``Bench.reset`` empties the table) or remove."""
    return BrokerSpace(
        name="postgres",
        url=bench.url,
        where="the PostgreSQL broker on the bench database (the jobs table is the queue)",
        flush=lambda: None,
        count=lambda: bench.count_waiting(),
        close=lambda: None,
    )


#: ``--broker`` URL schemes (``postgresql`` alone is taken as a scheme too) and how to make a space of
#: the script's own there: each ``--broker`` adds one run of scenario A.
BROKER_SPACES: dict[str, Callable[[Bench, str], BrokerSpace]] = {
    "amqp": rabbitmq_space,
    "amqps": rabbitmq_space,
    "postgresql": postgres_space,
    "postgresql+psycopg": postgres_space,
}


class Bench:
    """What every scenario shares: the bench database, an engine to read it, a Redis client, the
    spaces on other brokers (``--broker``), and which broker scenario A runs on now."""

    def __init__(self, url: str, workdir: Path, timeout_seconds: float) -> None:
        self.url = url
        self.workdir = workdir
        self.timeout_seconds = timeout_seconds
        self.engine = db.make_engine(url, pool_size=2, application_name="jobrunner-bench")
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.redis.ping()
        #: The spaces made on ``--broker`` URLs (flushed by :meth:`reset`, removed by :meth:`close`).
        self.spaces: list[BrokerSpace] = []
        #: The space scenario A and the latency runs use now; None: the bench Redis.
        self.space: BrokerSpace | None = None
        #: Scenario O's database and venv (None: not run).
        self.oban: ObanPeer | None = None

    @property
    def broker_url(self) -> str:
        """The broker of scenario A: the bench Redis, or the space :meth:`on` selected."""
        return REDIS_URL if self.space is None else self.space.url

    @property
    def broker_name(self) -> str:
        return "redis" if self.space is None else self.space.name

    @contextlib.contextmanager
    def on(self, space: BrokerSpace | None) -> Iterator[None]:
        """Run scenario A (or the latency runs) on ``space`` inside the block."""
        previous, self.space = self.space, space
        try:
            yield
        finally:
            self.space = previous

    def reset(self, *, counting: bool = True) -> None:
        """Empty the job tables, flush the bench Redis db and every broker space; the attempt
        counters' trigger on (as shipped) unless ``counting`` is False."""
        self.redis.flushdb()
        for space in self.spaces:
            space.flush()
        with self.engine.begin() as conn:
            conn.execute(text("TRUNCATE jobs CASCADE"))  # and every table referencing it
        self.set_counting(counting)

    def set_counting(self, on: bool) -> None:
        """Enable or disable the trigger that keeps the attempt counters (migration 0011)."""
        with self.engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE job_attempts {'ENABLE' if on else 'DISABLE'} TRIGGER count_job_attempts"))

    def vacuum(self) -> None:
        """Fresh statistics and visibility map after a bulk load, so autovacuum does not start mid-run."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE jobs"))

    def count_succeeded(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM jobs WHERE status = 'succeeded'")).scalar_one())

    def count_waiting(self) -> int:
        """Jobs waiting to be run (the PostgreSQL broker's queue)."""
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM jobs WHERE status = 'queued'")).scalar_one())

    def counts_by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status")).all()
        return {status: count for status, count in rows}

    def span(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT min(started_at), max(finished_at) FROM jobs")).one()
        return row[0], row[1]

    def worker_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBRUNNER_", "dramatiq_", "OTEL_"))}
        env.update(extra)
        return env

    def close(self) -> None:
        """Remove the broker spaces; close the engine and the Redis client."""
        try:
            while self.spaces:
                self.spaces.pop().close()
            if self.oban is not None:
                self.oban.close()
        finally:
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
    cpu_ms_per_job: float | None = None  # the worker's CPU time (all its processes) per job run meanwhile
    server_ms_per_job: float | None = None  # PostgreSQL's and Redis's CPU time per job run meanwhile
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
    done_before = 0
    while True:
        done = count()
        if cpu_before is None and done > 0:
            cpu_before, done_before = (time.monotonic(), cpu_snapshot()), done
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
                seconds = time.monotonic() - cpu_before[0]
                run.cpu = cpu_split(cpu_before[1], cpu_snapshot(), process_tree(proc.pid), seconds)
                if done > done_before:
                    run.cpu_ms_per_job = run.cpu["worker"] / 100 * seconds * 1000 / (done - done_before)
                    run.server_ms_per_job = run.cpu["postgres+redis"] / 100 * seconds * 1000 / (done - done_before)
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


#: The observability modes of scenario A (see the module doc); ``metrics`` is the runner as shipped.
OBSERVE_MODES = ("off", "metrics", "tracing")


class _OtlpSink(http.server.BaseHTTPRequestHandler):
    """Answers 200 to every OTLP/HTTP export and drops it."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


_sink: http.server.ThreadingHTTPServer | None = None


def otlp_sink_url() -> str:
    """The traces endpoint of an OTLP sink in this process (started on first use)."""
    global _sink
    if _sink is None:
        _sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
        threading.Thread(target=_sink.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{_sink.server_address[1]}/v1/traces"


def runner_settings(bench: Bench) -> Settings:
    return Settings(database_url=bench.url, broker_url=bench.broker_url, consumer_timeout_ms=CONSUMER_TIMEOUT_MS)


def runner_env(bench: Bench, job_modules: str = "", mode: str = "metrics") -> dict[str, str]:
    extra = {"JOBRUNNER_JOB_MODULES": job_modules, "PYTHONPATH": str(bench.workdir)} if job_modules else {}
    if mode == "tracing":
        extra |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp_sink_url()}
    return bench.worker_env(
        JOBRUNNER_DATABASE_URL=bench.url,
        JOBRUNNER_BROKER_URL=bench.broker_url,
        JOBRUNNER_CONSUMER_TIMEOUT_MS=str(CONSUMER_TIMEOUT_MS),
        **extra,
    )


def make_producer(bench: Bench, job_modules: Sequence[str] = ()) -> tuple[db.Database, dramatiq.Broker]:
    """A database whose sessions send job IDs to the bench broker after commit (like the API's)."""
    settings = runner_settings(bench)
    broker = producer.make_broker(settings)
    database = db.make_database(
        bench.url,
        pool_size=2,
        sender=producer.make_sender(broker),
        registry=kinds.load_registry(settings, job_modules),
        application_name="jobrunner-bench-producer",
    )
    return database, broker


def start_runner_worker(
    bench: Bench, log_path: Path, job_modules: str = "", mode: str = "metrics"
) -> tuple[subprocess.Popen[bytes], float]:
    spawned_at = time.time()
    proc = common.spawn(
        [str(BIN / "jobctl"), "worker", "--processes", str(PROCESSES), "--threads", str(THREADS)],
        env=runner_env(bench, job_modules, mode),
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


ASYNC_MODULE = '''
"""An async no-op kind. Written by tests/benchmarks/throughput.py."""
import jobs


@jobs.job_kind("bench.async_noop")
async def async_noop(session, job):
    """Do nothing, on the worker's event loop, with its AsyncSession."""
'''


def scenario_full(bench: Bench, n: int, index: int) -> Run:
    return _full_path(bench, Run("A full path", n), index, kind="noop", log_name="full")


def scenario_async(bench: Bench, n: int, index: int) -> Run:
    return _full_path(
        bench, Run("A' async noop", n), index, kind="bench.async_noop", job_modules="bench_async", log_name="async"
    )


def scenario_observe(mode: str) -> Callable[[Bench, int, int], Run]:
    """Scenario A in observability mode ``mode`` (``off`` or ``tracing``; ``metrics`` is A itself)."""

    def scenario(bench: Bench, n: int, index: int) -> Run:
        return _full_path(bench, Run(f"A (observe={mode})", n), index, kind="noop", mode=mode, log_name=mode)

    return scenario


def scenario_broker(space: BrokerSpace) -> Callable[[Bench, int, int], Run]:
    """Scenario A with ``space`` (a ``--broker``) as the broker."""

    def scenario(bench: Bench, n: int, index: int) -> Run:
        with bench.on(space):
            return _full_path(bench, Run(f"A ({space.name})", n), index, kind="noop", log_name=space.name)

    return scenario


def _full_path(
    bench: Bench, run: Run, index: int, *, kind: str, log_name: str, job_modules: str = "", mode: str = "metrics"
) -> Run:
    n = run.n
    bench.reset(counting=mode != "off")
    database, broker = make_producer(bench, [job_modules] if job_modules else [])
    try:
        started = time.perf_counter()
        for offset in range(0, n, ENQUEUE_BATCH):
            with db.session_scope(database.sessions) as session:
                for _ in range(min(ENQUEUE_BATCH, n - offset)):
                    store.create_job(session, kind)
        run.enqueue_seconds = time.perf_counter() - started
    finally:
        database.dispose()
        broker.close()
    queued = bench.redis.hlen("dramatiq:default.msgs") if bench.space is None else bench.space.count()
    print(
        f"  enqueued {n} jobs in {run.enqueue_seconds:.2f} s ({n / run.enqueue_seconds:,.0f}/s); "
        f"{queued} waiting on {bench.broker_name}",
        flush=True,
    )
    bench.vacuum()

    log_path = bench.workdir / f"{log_name}-{index}.log"
    proc, spawned_at = start_runner_worker(bench, log_path, job_modules, mode)
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


# --- scenario O: Oban for Python ------------------------------------------------------------------

#: The venv scenario O runs Oban for Python from (built on first use, reused after).
OBAN_VENV = ROOT / "var" / "bench-oban-venv"
#: What ``pip install`` gets into it (``JOBRUNNER_BENCH_OBAN_SPEC`` to pin a version: ``oban==0.7.0``).
OBAN_SPEC = os.environ.get("JOBRUNNER_BENCH_OBAN_SPEC", "oban")
OBAN_DB = "jobrunner_bench_oban"
#: Oban's oldest supported Python.
OBAN_MIN_PYTHON = (3, 12)

OBAN_MODULE = '''
"""Oban for Python: a no-op worker. Written by tests/benchmarks/throughput.py."""
from oban import worker


@worker(queue="default")
class Noop:
    async def process(self, job):
        """Do nothing."""
'''

OBAN_ENQUEUE = '''
"""Insert N Noop jobs with Oban's own enqueue_many, BATCH per statement; print the seconds taken.
Written by tests/benchmarks/throughput.py; run with the Oban venv's Python."""
import asyncio
import os
import sys
import time

from oban import Oban

from bench_oban import Noop


async def main(n, batch):
    pool = await Oban.create_pool(os.environ["OBAN_DSN"], min_size=1, max_size=2)
    try:
        oban = Oban(pool=pool)  # client mode: no queues, only inserts
        started = time.perf_counter()
        for offset in range(0, n, batch):
            await oban.enqueue_many([Noop.new({}) for _ in range(min(batch, n - offset))])
        print(f"{time.perf_counter() - started:.6f}")
    finally:
        await pool.close()


asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
'''

OBAN_LAUNCH = '''
"""Start COUNT copies of a command (``oban start ...``: Oban for Python runs one process per
command), pass SIGTERM/SIGINT on to them, exit when they all have. Written by
tests/benchmarks/throughput.py."""
import signal
import subprocess
import sys

procs = [subprocess.Popen(sys.argv[2:]) for _ in range(int(sys.argv[1]))]


def forward(signum, _frame):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signum)


signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
codes = [proc.wait() for proc in procs]
sys.exit(max(codes, default=0))
'''


def _python_version(python: str) -> tuple[int, int] | None:
    """``python``'s (major, minor), or None if it does not run (a pyenv shim of a version that is not
    selected exits with an error)."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def find_oban_python() -> str | None:
    """A Python >= 3.12 for Oban: ``JOBRUNNER_BENCH_OBAN_PYTHON`` if set, else ``python3.12`` and newer
    on PATH (one that runs), else the newest of pyenv's installed versions."""
    candidates: list[str] = []
    if os.environ.get("JOBRUNNER_BENCH_OBAN_PYTHON"):
        candidates.append(os.environ["JOBRUNNER_BENCH_OBAN_PYTHON"])
    candidates += [found for minor in range(12, 20) if (found := shutil.which(f"python3.{minor}"))]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pyenv = sorted(
        (version for version in (pyenv_root / "versions").glob("3.*") if (version / "bin" / "python3").exists()),
        key=lambda path: tuple(int(part) if part.isdigit() else -1 for part in path.name.split(".")),
        reverse=True,
    )
    candidates += [str(version / "bin" / "python3") for version in pyenv]
    for python in candidates:
        version = _python_version(python)
        if version is not None and version >= OBAN_MIN_PYTHON:
            return python
    return None


def oban_venv() -> tuple[Path | None, str]:
    """The Python of a venv with Oban for Python installed (``OBAN_VENV``, built on first use), and
    a line for the log; (None, why) if there is no Python >= 3.12 or the install fails."""
    python = OBAN_VENV / "bin" / "python"
    version_of = "import importlib.metadata as m, sys; print(m.version('oban'), sys.version.split()[0])"
    if python.exists():
        found = subprocess.run([str(python), "-c", version_of], capture_output=True, text=True)
        if found.returncode == 0:
            oban_version, py = found.stdout.split()
            return python, f"Oban for Python {oban_version} on Python {py} ({OBAN_VENV}, reused)"
    base = find_oban_python()
    if base is None:
        return None, (
            f"no Python >= {'.'.join(map(str, OBAN_MIN_PYTHON))} (python3.12+ on PATH, pyenv's versions, "
            "JOBRUNNER_BENCH_OBAN_PYTHON)"
        )
    print(f"building {OBAN_VENV} with {base} and installing {OBAN_SPEC} (once) ...", flush=True)
    shutil.rmtree(OBAN_VENV, ignore_errors=True)
    steps = [[base, "-m", "venv", str(OBAN_VENV)], [str(python), "-m", "pip", "install", "-q", OBAN_SPEC]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            shutil.rmtree(OBAN_VENV, ignore_errors=True)
            return None, f"`{' '.join(step)}` failed (exit {done.returncode}):\n{tail}"
    found = subprocess.run([str(python), "-c", version_of], capture_output=True, text=True, check=True)
    oban_version, py = found.stdout.split()
    return python, f"Oban for Python {oban_version} on Python {py} ({OBAN_VENV}, built now)"


class ObanPeer:
    """Scenario O's database (of its own on the bench PostgreSQL, Oban's schema installed with ``oban
    install``) and the venv it runs from."""

    def __init__(self, python: Path, workdir: Path) -> None:
        self.python = python
        self.workdir = workdir
        url = common.create_empty_database(OBAN_DB, common.PG_ADMIN_URL)
        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.engine = db.make_engine(url, pool_size=2, application_name="jobrunner-bench-oban")
        subprocess.run(
            [str(python.parent / "oban"), "install", "--dsn", self.dsn],
            cwd=workdir,
            env=self.env(),
            capture_output=True,
            check=True,
        )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBRUNNER_", "OBAN_", "dramatiq_"))}
        env.pop("PYTHONHOME", None)
        return env | {"OBAN_DSN": self.dsn, "PYTHONPATH": str(self.workdir)}

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("TRUNCATE oban_jobs RESTART IDENTITY"))

    def vacuum(self) -> None:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE oban_jobs"))

    def count_completed(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM oban_jobs WHERE state = 'completed'")).scalar_one())

    def counts_by_state(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT state::text, count(*) FROM oban_jobs GROUP BY 1 ORDER BY 1")).all()
        return {state: count for state, count in rows}

    def span(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """First attempt to last completion (Oban keeps them as UTC timestamps without time zone)."""
        with self.engine.connect() as conn:
            first, last = conn.execute(text("SELECT min(attempted_at), max(completed_at) FROM oban_jobs")).one()
        return tuple(None if t is None else t.replace(tzinfo=dt.UTC) for t in (first, last))  # type: ignore[return-value]

    def close(self) -> None:
        self.engine.dispose()


def scenario_oban(peer: ObanPeer) -> Callable[[Bench, int, int], Run]:
    """Scenario O: N noop jobs inserted with Oban's ``enqueue_many`` (``ENQUEUE_BATCH`` per statement,
    timed as "enqueue"), then ``--processes`` x ``oban start --queues default:8`` processes."""

    def scenario(bench: Bench, n: int, index: int) -> Run:
        run = Run("O Oban for Python", n)
        peer.reset()
        enqueued = subprocess.run(
            [str(peer.python), str(bench.workdir / "bench_oban_enqueue.py"), str(n), str(ENQUEUE_BATCH)],
            cwd=bench.workdir,
            env=peer.env(),
            capture_output=True,
            text=True,
        )
        if enqueued.returncode != 0:
            run.note = f"enqueue failed (exit {enqueued.returncode}): {enqueued.stderr.strip()[-500:]}"
            print(f"  ! {run.note}", flush=True)
            return run
        run.enqueue_seconds = float(enqueued.stdout.split()[-1])
        print(
            f"  enqueued {n} jobs in {run.enqueue_seconds:.2f} s ({n / run.enqueue_seconds:,.0f}/s); "
            f"{peer.counts_by_state()} in oban_jobs",
            flush=True,
        )
        peer.vacuum()
        log_path = bench.workdir / f"oban-{index}.log"
        spawned_at = time.time()
        proc = common.spawn(
            [
                str(peer.python),
                str(bench.workdir / "bench_oban_launch.py"),
                str(PROCESSES),
                str(peer.python.parent / "oban"),
                "start",
                "--queues",
                f"default:{THREADS}",
            ],
            env=peer.env(),
            log_path=log_path,
            cwd=bench.workdir,
        )
        try:
            child = worker_child_pid(proc.pid)
            wait_until_done(
                bench, proc, run, peer.count_completed, spawned_at=spawned_at, rss_pid=child, log_path=log_path
            )
        finally:
            stop(proc)
        first, last = peer.span()
        if first and last:
            run.busy_seconds = (last - first).total_seconds()
            run.boot_seconds = first.timestamp() - spawned_at
        run.statuses = peer.counts_by_state()
        return run

    return scenario


# --- latency --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Latency:
    rate: float
    n: int
    done: int = 0
    achieved_rate: float = 0.0
    late_sends: int = 0  # sends that started more than 5 ms behind schedule
    latencies_ms: list[float] = dataclasses.field(default_factory=list)  # started_at - created_at
    after_commit_ms: list[float] = dataclasses.field(default_factory=list)  # started_at - commit returned
    note: str = ""
    broker: str = "redis"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def scenario_latency(bench: Bench, phases: Sequence[tuple[float, int]]) -> list[Latency]:
    bench.reset()
    database, broker = make_producer(bench)
    log_path = bench.workdir / f"latency-{bench.broker_name}.log"
    proc, _ = start_runner_worker(bench, log_path)
    results = []
    try:
        # Warm up: the worker is booted, its pool connected, and the producer's too.
        warm = [_create_one(database)[0] for _ in range(20)]
        if _wait_for(bench, proc, warm, log_path) < len(warm):
            note = "the worker did not run the warm-up jobs"
            return [Latency(rate, n, note=note, broker=bench.broker_name) for rate, n in phases]
        for rate, n in phases:
            print(
                f"  latency on {bench.broker_name} at {rate:g} jobs/s: {n} jobs over {n / rate:.0f} s ...", flush=True
            )
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
            done = int(conn.execute(query, {"ids": ids}).scalar_one())
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
    result = Latency(rate, n, broker=bench.broker_name)
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
        + (
            f"; CPU per job: worker {run.cpu_ms_per_job:.2f} ms, postgres+redis {run.server_ms_per_job:.2f} ms"
            if run.cpu_ms_per_job is not None and run.server_ms_per_job is not None
            else ""
        )
        + (f"; NOTE {run.note}" if run.note else ""),
        flush=True,
    )


def _ratio(rate_a: float | None, rate_b: float | None) -> float | None:
    return rate_a / rate_b if rate_a and rate_b else None


def _per_run_ratios(runs_a: Sequence[Run], runs_b: Sequence[Run]) -> str:
    """Each run's ratio to the run of the same repeat (every scenario ran args.repeat times: a run
    that failed ended the benchmark before the summary)."""
    return ", ".join(_fmt(_ratio(a.rate, b.rate), ".2f") for a, b in zip(runs_a, runs_b, strict=True))


def print_summary(
    args: argparse.Namespace, scenarios: Sequence[Scenario], runs: dict[str, list[Run]], latency: list[Latency]
) -> None:
    line = "=" * 100
    print(
        f"\n{line}\njobrunner throughput benchmark: {args.jobs:,} jobs per scenario, {args.repeat} run(s) each "
        f"(medians), {PROCESSES} worker process(es) x {THREADS} threads, consumer timeout {CONSUMER_TIMEOUT_MS} ms, "
        f"{os.cpu_count()} CPUs\n{line}"
    )
    header = (
        f"{'scenario':<20} {'jobs/s':>10} {'busy s':>8} {'wall s':>8} {'boot s':>7} {'enqueue s':>10}  "
        "runs (jobs/s)  statuses (last run)"
    )
    print(header)
    print("-" * len(header))
    rates: dict[str, float | None] = {}
    for scenario in scenarios:
        rs = runs[scenario.key]
        if not rs:
            continue
        rates[scenario.key] = _median([r.rate for r in rs])
        per_run = ", ".join(_fmt(r.rate) for r in rs)
        print(
            f"{scenario.label:<20} {_fmt(rates[scenario.key]):>10} "
            f"{_fmt(_median([r.busy_seconds for r in rs]), '.3f'):>8} "
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
    print("benchmark's, PostgreSQL or Redis: anything above a few % means a shared machine skewed the figures);")
    print("per job: the worker's CPU time (all its processes), and PostgreSQL's + Redis's, per job run meanwhile")
    for scenario in scenarios:
        cpus = [r.cpu for r in runs[scenario.key] if r.cpu]
        if cpus:
            per_job = _median([r.cpu_ms_per_job for r in runs[scenario.key]])
            server_per_job = _median([r.server_ms_per_job for r in runs[scenario.key]])
            print(
                f"  {scenario.label:<20} "
                + "   ".join(f"{part} {_median([c[part] for c in cpus]):.0f}" for part in cpus[0])
                + f"   per job: worker {_fmt(per_job, '.2f', ' ms')}, "
                + f"postgres+redis {_fmt(server_per_job, '.2f', ' ms')}"
            )

    print("\nratios (of the median rates; in brackets, each run's ratio to the runs beside it)")
    for name, other in (("full/bare", "bare"), ("full/naive", "naive")):
        if not runs.get(other):
            continue  # skipped
        ratio = _ratio(rates["full"], rates[other])
        target = TARGETS[name]
        verdict = _verdict(None if ratio is None else ratio >= target)
        print(
            f"  {name:<14} {_fmt(ratio, '.2f'):>6}   (target >= {target:.2f}){verdict}"
            f"   [{_per_run_ratios(runs['full'], runs[other])}]"
        )
    for scenario in scenarios:
        if scenario.kind in ("async", "broker"):
            name = f"{scenario.key}/full"
            print(
                f"  {name:<14} {_fmt(_ratio(rates[scenario.key], rates['full']), '.2f'):>6}   "
                f"({scenario.label} / A full path, same run)   [{_per_run_ratios(runs[scenario.key], runs['full'])}]"
            )
    if runs.get("oban"):
        for scenario in scenarios:
            if scenario.key == "full" or scenario.kind == "broker":
                name = f"{scenario.key}/oban"
                ratio = _ratio(rates[scenario.key], rates["oban"])
                target = TARGETS.get(name, TARGETS["full/oban"])
                verdict = _verdict(None if ratio is None else ratio >= target)
                print(
                    f"  {name:<14} {_fmt(ratio, '.2f'):>6}   (target >= {target:.2f}){verdict}"
                    f"   [{_per_run_ratios(runs[scenario.key], runs['oban'])}]"
                )

    if args.modes != ["metrics"]:
        print("\nscenario A by observability mode (runs alternated; median jobs/s, ratio to B, each run)")
        for scenario in (scenario for scenario in scenarios if scenario.mode is not None):
            mode_runs = runs[scenario.key]
            rate = rates[scenario.key]
            cpus = [r.cpu for r in mode_runs if r.cpu]
            cpu = (
                "   CPU " + " ".join(f"{part} {_median([c[part] for c in cpus]):.0f}" for part in cpus[0])
                if cpus
                else ""
            )
            print(
                f"  {scenario.mode:<8} {_fmt(rate):>8}  full/bare {_fmt(_ratio(rate, rates['bare']), '.2f'):>5}"
                f"   [{', '.join(_fmt(r.rate) for r in mode_runs)}]{cpu}"
            )

    print("\nworker child RSS, scenario A (MiB)")
    for i, r in enumerate(runs["full"], 1):
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


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One scenario of a repeat: its key in the results, its label, and how to run it once."""

    key: str
    label: str
    run: Callable[[Bench, int, int], Run]
    kind: str = ""  # "async", "broker", or "" (for the ratios to A)
    mode: str | None = None  # the observability mode, for runs of A (A itself: "metrics")


def plan(args: argparse.Namespace, bench: Bench) -> list[Scenario]:
    """The scenarios of one repeat, in the order they run: A in each ``--observe`` mode (A itself
    is the ``metrics`` one, always run: every ratio is to it), A', A on each ``--broker``, B, C, O."""
    modes = args.modes if "metrics" in args.modes else ["metrics", *args.modes]
    scenarios = [
        Scenario("full", "A full path", scenario_full, mode="metrics")
        if mode == "metrics"
        else Scenario(f"observe={mode}", f"A (observe={mode})", scenario_observe(mode), mode=mode)
        for mode in modes
    ]
    if args.async_noop:
        scenarios.append(Scenario("async", "A' async noop", scenario_async, kind="async"))
    for space in bench.spaces:
        scenarios.append(Scenario(space.name, f"A ({space.name})", scenario_broker(space), kind="broker"))
    scenarios.append(Scenario("bare", "B bare Dramatiq", scenario_bare))
    if not args.skip_naive:
        scenarios.append(Scenario("naive", "C naive pattern", scenario_naive))
    if bench.oban is not None:
        scenarios.append(Scenario("oban", "O Oban for Python", scenario_oban(bench.oban)))
    return scenarios


def open_spaces(bench: Bench, urls: Sequence[str]) -> None:
    """A space of the script's own on each ``--broker`` (removed by ``bench.close()``)."""
    for url in urls:
        space = BROKER_SPACES[url.split("://", 1)[0]](bench, url)
        same_kind = sum(other.name.split("-")[0] == space.name for other in bench.spaces)
        if same_kind:
            space.name = f"{space.name}-{same_kind + 1}"  # keys and labels stay distinct
        bench.spaces.append(space)
        print(f"{space.name}: {space.where}", flush=True)


def open_oban(bench: Bench) -> None:
    """Set up scenario O (its venv, built on first use, and a database of its own), or say why not."""
    python, line = oban_venv()
    if python is None:
        print(f"scenario O (Oban for Python) skipped: {line}", flush=True)
        return
    for name, source in (("bench_oban", OBAN_MODULE), ("bench_oban_enqueue", OBAN_ENQUEUE)):
        (bench.workdir / f"{name}.py").write_text(source)
    (bench.workdir / "bench_oban_launch.py").write_text(OBAN_LAUNCH)
    try:
        bench.oban = ObanPeer(python, bench.workdir)
    except subprocess.CalledProcessError as exc:
        output = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        print(f"scenario O (Oban for Python) skipped: `oban install` failed:\n{output.strip()[-800:]}", flush=True)
        return
    print(f"scenario O: {line}; database {make_url(bench.oban.dsn).database}", flush=True)


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=10_000, help="jobs (messages) per throughput scenario (default 10000)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each throughput scenario; medians are reported")
    parser.add_argument("--skip-latency", action="store_true", help="skip the enqueue-to-start latency runs")
    parser.add_argument(
        "--async-noop", action="store_true", help="also run A with an async no-op kind (A'), beside the sync one"
    )
    parser.add_argument("--skip-naive", action="store_true", help="skip scenario C")
    parser.add_argument("--skip-oban", action="store_true", help="skip scenario O (Oban for Python)")
    parser.add_argument(
        "--observe",
        default="metrics",
        help="scenario A's observability modes, comma-separated, run alternately: off, metrics, tracing "
        "(default metrics: as shipped, which is A itself and always runs)",
    )
    parser.add_argument(
        "--broker",
        action="append",
        default=[],
        metavar="URL",
        help="another broker: also run scenario A, and the latency, on a space of the script's own there "
        "(may be repeated; Redis is always measured): amqp://user:pass@host:port, a vhost on that RabbitMQ node; "
        "postgresql, the PostgreSQL broker on the bench database",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="worker processes of every scenario's worker (default 1; 8 threads each)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="longest wait for one scenario, seconds (default 60 + 0.03 s per job)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.repeat < 1 or args.processes < 1:
        parser.error("--jobs, --repeat and --processes must be at least 1")
    args.modes = [mode.strip() for mode in args.observe.split(",") if mode.strip()]
    if not args.modes or set(args.modes) - set(OBSERVE_MODES) or len(set(args.modes)) < len(args.modes):
        parser.error(f"--observe takes distinct modes among {', '.join(OBSERVE_MODES)}")
    for url in args.broker:
        if url.split("://", 1)[0] not in BROKER_SPACES:
            parser.error(
                f"--broker {url}: takes a URL of {', '.join(s + '://...' for s in BROKER_SPACES)} "
                "(Redis is always measured)"
            )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    global PROCESSES
    args = parse_args(argv)
    PROCESSES = args.processes
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    timeout = args.timeout if args.timeout is not None else 60 + 0.03 * args.jobs
    scenarios: list[Scenario] = []
    runs: dict[str, list[Run]] = {}
    latency: list[Latency] = []
    bench = None
    try:
        with tempfile.TemporaryDirectory(prefix="jobrunner-bench-") as tmp:
            workdir = Path(tmp)
            (workdir / "bench_bare.py").write_text(textwrap.dedent(BARE_MODULE % {"key": SPANS_KEY}))
            (workdir / "bench_naive.py").write_text(textwrap.dedent(NAIVE_MODULE))
            (workdir / "bench_async.py").write_text(ASYNC_MODULE)
            sys.path.insert(0, str(workdir))  # the producer's registry knows bench.async_noop too
            print(f"creating database {BENCH_DB}_{common.RUN_ID} and migrating it; Redis {REDIS_URL}", flush=True)
            bench = Bench(common.recreate_database(BENCH_DB, common.PG_ADMIN_URL), workdir, timeout)
            open_spaces(bench, args.broker)
            if not args.skip_oban:
                open_oban(bench)
            scenarios = plan(args, bench)
            runs = {scenario.key: [] for scenario in scenarios}
            for i in range(1, args.repeat + 1):
                for scenario in scenarios:
                    print(f"[run {i}/{args.repeat}] {scenario.label}: {args.jobs:,} jobs", flush=True)
                    run = scenario.run(bench, args.jobs, i)
                    runs[scenario.key].append(run)
                    print_run(run)
            if not args.skip_latency:
                print("latency: full-path worker, jobs created one per transaction at a steady rate", flush=True)
                for space in [None, *bench.spaces]:
                    with bench.on(space):
                        latency += scenario_latency(bench, [(5.0, 60), (200.0, 2_000)])
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the processes this script started", flush=True)
        return 130
    finally:
        stop_all()
        if bench is not None:
            bench.close()
    print_summary(args, scenarios, runs, latency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
