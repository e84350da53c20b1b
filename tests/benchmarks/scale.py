"""Flat costs at scale: each per-job and operator operation timed on a small and on a big database of
the same shape (PostgreSQL), the p99 ratio printed beside the target (at most 2x).

What it measures, at each ``--sizes`` (default 10,000 and 10,000,000 rows in ``jobs``, three
``job_attempts`` each: 30,000,000 at the big size):

1. **data**: :mod:`tests.benchmarks.bigfill` (the shape ``metrics_scrape.py`` uses: 1% of the jobs
   not finished, a third each ``queued``, ``running``, ``retrying``; every 37th of the others
   ``failed``; 20 kinds, 5 queues; one job every 0.1 s up to now), then, the same at every size:
   50 ``failed`` jobs of kind ``incident`` (what ``replay --kind incident`` selects) and one batch
   whose chunks reference one job in 100 (``batch_chunks.job_id``: what a prune's cascade updates).
   Before the timings every unfinished job is made current (sent, leased or due a day from now), but
   20 ``queued`` jobs overdue (their message lost) and 20 ``running`` jobs with an expired lease
   (their worker died): the fixed work the sweeper finds at every size.
2. **timings**: ``--repeat`` times each (after 5 unmeasured), one after another, in this process:

   - ``claim``: ``store.claim_job`` of a ``queued`` job (a rotating set of 10);
   - ``success commit``: ``store.complete_job`` in a session, then ``commit``, as the worker's
     middleware does for a handler that wrote nothing (the job is put back to ``queued`` unmeasured);
   - ``sweeper pass``: the store functions ``worker.sweeper.sweep_once`` runs in its one
     transaction (the advisory lock, ``recover_lost_jobs``, ``resend_overdue_jobs`` without a broker
     probe, ``release_overdue_scheduled``), rolled back, so every pass finds the same 40 jobs to
     take back or send again among the unfinished ones (100,000 at 10M);
   - ``GET /jobs`` first page, with each filter the API offers (``status=`` each state, ``kind=``,
     both, and ``cursor=`` for the second page), and ``GET /metrics``: over HTTP (httpx) against a
     real API (``uvicorn api.main:app``) this script starts on the database;
   - ``replay --kind K --dry-run``: what ``jobctl replay`` runs for it (``store.select_failed_jobs``
     and ``store.missing_jobs`` in a read session; not the CLI process, whose start-up would hide
     it), for ``incident`` (50 jobs at every size), for ``kind7 --limit 50``, and for ``kind7``
     (every failed job of a kind: 1 in 740 rows, so its result grows with the table);
   - ``prune batch``: one ``store.prune_jobs`` call as ``jobctl prune`` makes it (1,000 succeeded or
     cancelled jobs finished before the middle of the history, with their attempts), rolled back.
3. **plans**: ``EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF)`` of every statement each operation runs,
   at the biggest size (statements that change rows are explained in a transaction rolled back), with
   a warning beside any sequential scan of ``jobs`` or ``job_attempts``.

It prints a table (operation; p50 and p99 at each size; the p99 ratio of the biggest to the smallest
size, target <= 2x), the plans and the machine's load before and after. It never asserts. The fill of
10,000,000 jobs takes several minutes and about 10 GB: ``--keep`` keeps the databases
(``jobrunner_scale_<size>``) and a later run with ``--keep`` reuses them, migrated to the newest
revision, instead of filling them again (drop them by hand when done). Run from the project root::

    .venv/bin/python tests/benchmarks/scale.py [--sizes 10000,10000000] [--repeat 100] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx
from sqlalchemy import Connection, event, text

from jobs import db, store
from jobs.models import JobStatus
from jobs.store import running
from tests.benchmarks import bigfill, common

TARGET_RATIO = 2.0
#: Jobs of the kind ``replay --kind incident`` selects, at every size.
INCIDENT_JOBS = 50
#: Overdue ``queued`` jobs and ``running`` jobs with an expired lease each sweeper pass finds.
SWEEP_WORK = 20
#: Queued jobs the claim takes in turn.
CLAIM_TARGETS = 10
LEASE_SECONDS = 30.0
#: What ``jobctl prune`` deletes per transaction (its default batch).
PRUNE_BATCH = 1000
WARMUP = 5


@dataclasses.dataclass
class Operation:
    """One timed operation: ``run`` does it once (unmeasured set-up goes in ``before``/``after``)."""

    name: str
    run: Callable[[], Any]
    before: Callable[[], Any] | None = None
    after: Callable[[], Any] | None = None
    #: Runs the operation's statements once more for their plans (None: ``run`` itself).
    explain: Callable[[], Any] | None = None


# --- the data beyond the shared fill --------------------------------------------------------------


def add_fixed_rows(conn: Connection, jobs: int) -> None:
    """The incident's failed jobs and the batch whose chunks reference jobs (once per database)."""
    if conn.execute(text("SELECT count(*) FROM jobs WHERE kind = 'incident'")).scalar_one():
        return
    span = jobs * bigfill.SPACING_SECONDS
    conn.execute(
        text(f"""
INSERT INTO jobs (id, kind, queue, args, status, attempts, max_attempts, created_at, enqueued_at,
                  started_at, finished_at, replay_count, error_type, error_message)
SELECT md5('incident' || i)::uuid, 'incident', 'queue0', '{{}}'::jsonb, 'failed', 1, 1, t, t, t, t,
       0, 'builtins.RuntimeError', 'the upstream was down'
FROM generate_series(1, {INCIDENT_JOBS}) AS i,
     LATERAL (SELECT now() - make_interval(secs => {span} * i / {INCIDENT_JOBS + 1}) AS t) AS times
""")
    )
    batch = uuid.uuid4()
    conn.execute(
        text(
            "INSERT INTO batches (id, operation, chunk_size, status, created_at, total, processed, failed,"
            " chunks_total, chunks_done, run, completions) "
            "VALUES (:id, 'validate', 100, 'completed', now(), 0, 0, 0, 0, 0, 0, 1)"
        ),
        {"id": batch},
    )
    conn.execute(
        text(f"""
INSERT INTO batch_chunks (batch_id, number, job_id, first_id, last_id, size, status, processed, failed)
SELECT :batch, i, md5((i * 100 + 1)::text)::uuid, i * 100, i * 100 + 99, 100, 'succeeded', 100, 0
FROM generate_series(0, {jobs // 100 - 1}) AS i
"""),
        {"batch": batch},
    )
    conn.execute(text("ANALYZE jobs"))
    conn.execute(text("ANALYZE batch_chunks"))


def settle(conn: Connection) -> list[uuid.UUID]:
    """Make every unfinished job current but the sweeper's fixed work (see the module doc); return
    the queued jobs the claim takes in turn."""
    later = "now() + interval '1 day'"
    conn.execute(
        text(f"""
UPDATE jobs SET enqueued_at = {later}, resend_checked_at = NULL,
       next_retry_at = CASE WHEN status = 'retrying' THEN {later} END,
       lease_expires_at = CASE WHEN status = 'running' THEN {later} END
WHERE status IN ('queued', 'retrying', 'running')
""")
    )
    for status, column in (("queued", "enqueued_at"), ("running", "lease_expires_at")):
        conn.execute(
            text(f"""
UPDATE jobs SET {column} = now() - interval '1 hour'
WHERE id IN (SELECT id FROM jobs WHERE status = '{status}' ORDER BY id LIMIT {SWEEP_WORK})
""")
        )
    rows = conn.execute(
        text(
            "SELECT id FROM jobs WHERE status = 'queued' AND enqueued_at > now() ORDER BY id DESC "
            f"LIMIT {CLAIM_TARGETS}"
        )
    )
    return [row.id for row in rows]


# --- the operations -------------------------------------------------------------------------------


class Worker:
    """The claim and the success commit of a rotating set of queued jobs, as the worker runs them."""

    def __init__(self, database: db.Database, targets: list[uuid.UUID]) -> None:
        self.database = database
        self.targets = targets
        self.turn = 0
        self.job: Any = None
        self.conn = database.engine.connect()  # the claim runs outside any transaction

    def claim(self) -> None:
        job_id = self.targets[self.turn % len(self.targets)]
        self.turn += 1
        self.job = store.claim_job(self.conn, job_id, worker_id="bench:1", lease_seconds=LEASE_SECONDS)
        if self.job is None:
            raise RuntimeError(f"job {job_id} could not be claimed")

    def succeed(self) -> None:
        with self.database.sessions() as session:
            if not store.complete_job(session.connection(), self.job):
                raise RuntimeError(f"job {self.job.id} lost its claim")
            session.commit()

    def put_back(self) -> None:
        """The job back to ``queued`` as it was (unmeasured)."""
        with self.conn.begin():
            self.conn.execute(
                text("DELETE FROM job_attempts WHERE job_id = :id AND number > :n"),
                {"id": self.job.id, "n": self.job.attempt - 1},
            )
            self.conn.execute(
                text(
                    "UPDATE jobs SET status = 'queued', attempts = attempts - 1, claim_token = NULL, worker_id = NULL,"
                    " lease_expires_at = NULL, started_at = NULL, finished_at = NULL,"
                    " enqueued_at = now() + interval '1 day' WHERE id = :id"
                ),
                {"id": self.job.id},
            )
        self.job = None

    def explain_claim(self, conn: Connection) -> None:
        # The hot path runs running._CLAIM precompiled on the driver's cursor (no SQLAlchemy events):
        # the same Core statement through conn.execute shows its plan.
        conn.execute(
            running._CLAIM,
            {"b_job_id": self.targets[0], "b_token": uuid.uuid4(), "b_lease_seconds": LEASE_SECONDS, "b_worker": "x"},
        )

    def explain_success(self, conn: Connection) -> None:
        conn.execute(
            text("UPDATE jobs SET status = 'running', claim_token = :t WHERE id = :id"),
            {"t": uuid.UUID(int=1), "id": self.targets[0]},
        )
        conn.execute(running._SUCCEED_WITH_ATTEMPT, {"b_job_id": self.targets[0], "b_token": uuid.UUID(int=1)})


def sweep_pass(database: db.Database) -> tuple[int, int, int]:
    """The store functions of one ``sweep_once`` pass, in one transaction, rolled back."""
    with database.sessions() as session:
        try:
            if not store.try_sweep_lock(session):
                raise RuntimeError("another sweeper holds the lock")
            recovered = store.recover_lost_jobs(session, quarantine_after_lost=3)
            resent = store.resend_overdue_jobs(session, older_than_seconds=60)
            released = store.release_overdue_scheduled(session, older_than_seconds=60)
        finally:
            session.rollback()
    if len(recovered) != SWEEP_WORK or len(resent) != SWEEP_WORK:
        raise RuntimeError(f"the pass found {len(recovered)} lost and {len(resent)} overdue jobs, not {SWEEP_WORK}")
    return len(recovered), len(resent), len(released)


def replay_dry_run(database: db.Database, kind: str, limit: int | None = None) -> int:
    """What ``jobctl replay --kind KIND [--limit N] --dry-run`` reads."""
    with database.readers() as session:
        selected = store.select_failed_jobs(session, job_ids=[], kind=kind, limit=limit)
        store.missing_jobs(session, [])
    return len(selected)


def prune_batch(database: db.Database, older_than: Any) -> int:
    """One ``jobctl prune`` batch, rolled back."""
    with database.sessions() as session:
        try:
            deleted = store.prune_jobs(
                session,
                statuses=[JobStatus.SUCCEEDED, JobStatus.CANCELLED],
                older_than=older_than,
                batch_size=PRUNE_BATCH,
            )
        finally:
            session.rollback()
    if deleted != PRUNE_BATCH:
        raise RuntimeError(f"the prune batch deleted {deleted} jobs, not {PRUNE_BATCH}")
    return deleted


def http_operations(client: httpx.Client) -> list[Operation]:
    """``GET /jobs`` first page, with each filter, its second page, and ``GET /metrics``."""

    def get(path: str) -> Callable[[], None]:
        def run() -> None:
            client.get(path).raise_for_status()

        return run

    second = client.get("/jobs").json()["next_cursor"]
    paths = ["/jobs"] + [f"/jobs?status={status.value}" for status in JobStatus]
    paths += ["/jobs?kind=kind7", "/jobs?kind=kind7&status=failed", "/jobs?kind=incident", f"/jobs?cursor={second}"]
    operations = [
        Operation(f"GET {path if 'cursor' not in path else '/jobs?cursor=<page 2>'}", get(path)) for path in paths
    ]
    return [*operations, Operation("GET /metrics", get("/metrics"))]


# --- timing and plans -----------------------------------------------------------------------------


def time_operation(operation: Operation, repeat: int, budget_seconds: float) -> list[float]:
    """Milliseconds of each of ``repeat`` runs (after :data:`WARMUP` unmeasured ones), fewer if
    they take longer than ``budget_seconds`` in all (a slow operation's p99 is then its maximum)."""
    timings: list[float] = []
    deadline = time.monotonic() + budget_seconds
    for index in range(WARMUP + repeat):
        if operation.before is not None:
            operation.before()
        began = time.perf_counter()
        operation.run()
        elapsed = (time.perf_counter() - began) * 1000
        if operation.after is not None:
            operation.after()
        if index >= WARMUP:
            timings.append(elapsed)
            if time.monotonic() > deadline and len(timings) >= 10:
                break
    return timings


def report(name: str, timings: list[float]) -> None:
    p50, p99 = statistics.median(timings), bigfill.percentile(timings, 0.99)
    print(f"  {name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(timings)} runs)", flush=True)


@contextlib.contextmanager
def captured_statements(database: db.Database) -> Iterator[list[tuple[str, Any]]]:
    """The SQL (and parameters) sent through ``database``'s engine inside the block."""
    captured: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        captured.append((statement, parameters[0] if executemany else parameters))

    event.listen(database.engine, "before_cursor_execute", capture)
    try:
        yield captured
    finally:
        event.remove(database.engine, "before_cursor_execute", capture)


#: The plans, printed after the table.
PLANS: list[str] = []


def short(statement: str) -> str:
    """``statement`` on one line, its select list and long IN lists shortened."""
    flat = " ".join(statement.split())
    flat = re.sub(r"^SELECT (.{60,}?) FROM", "SELECT ... FROM", flat)
    flat = re.sub(r"IN \((%\([a-z_0-9]+\)s::\w+, ){3,}[^)]*\)", "IN (...)", flat)
    return flat if len(flat) <= 220 else flat[:220] + " ..."


def explain_statements(database: db.Database, name: str, statements: list[tuple[str, Any]]) -> None:
    """EXPLAIN ANALYZE each statement in a transaction rolled back, into :data:`PLANS`, a
    sequential scan of a big table flagged."""
    PLANS.append(f"\n{name}")
    seen = set()
    for statement, parameters in statements:
        if statement in seen or statement.split(None, 1)[0].upper() not in (
            "SELECT",
            "UPDATE",
            "DELETE",
            "INSERT",
            "WITH",
        ):
            continue
        seen.add(statement)
        PLANS.append(f"  {short(statement)}")
        with database.engine.connect() as conn, conn.begin() as transaction:
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + statement, parameters).all()
            transaction.rollback()
        for (line,) in plan:
            if line.startswith("Planning Time"):
                continue
            whole = any(f"Seq Scan on {table} " in line + " " for table in ("jobs", "job_attempts", "batch_chunks"))
            line = line if len(line) <= 200 else line[:200] + " ..."
            PLANS.append(f"      {line}{'   <-- WHOLE TABLE' if whole else ''}")


# --- one size ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class SizeResult:
    jobs: int
    timings: dict[str, list[float]]


def measure_size(jobs: int, args: argparse.Namespace, *, explain: bool, workdir: Path) -> SizeResult:
    name = f"jobrunner_scale_{jobs}"
    unfinished = max(jobs // 100, 1)
    url = bigfill.filled_database(name, jobs=jobs, unfinished=unfinished, attempts_per_job=3, keep=args.keep)
    database = db.make_database(url)
    with database.engine.connect() as conn, conn.begin():
        add_fixed_rows(conn, jobs)
        targets = settle(conn)
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        bigfill.vacuum_analyze(conn)
    older_than = store.utcnow() - dt.timedelta(seconds=jobs * bigfill.SPACING_SECONDS / 2)
    worker = Worker(database, targets)
    operations = [
        Operation("claim", worker.claim, after=lambda: (worker.succeed(), worker.put_back())),
        Operation("success commit", worker.succeed, before=worker.claim, after=worker.put_back),
        Operation("sweeper pass (20 lost + 20 overdue)", lambda: sweep_pass(database)),
        Operation("replay --kind incident --dry-run", lambda: replay_dry_run(database, "incident")),
        Operation("replay --kind kind7 --limit 50 --dry-run", lambda: replay_dry_run(database, "kind7", 50)),
        Operation("replay --kind kind7 --dry-run (grows)", lambda: replay_dry_run(database, "kind7")),
        Operation(f"prune batch ({PRUNE_BATCH})", lambda: prune_batch(database, older_than)),
    ]
    timings: dict[str, list[float]] = {}
    for operation in operations:
        timings[operation.name] = time_operation(operation, args.repeat, args.budget_seconds)
        report(operation.name, timings[operation.name])
    if explain:
        for operation in operations[2:]:
            with captured_statements(database) as statements:
                operation.run()
            explain_statements(database, operation.name, statements)
        for label, runner in (("claim", worker.explain_claim), ("success commit", worker.explain_success)):
            with captured_statements(database) as statements, database.engine.connect() as conn, conn.begin() as tx:
                runner(conn)
                tx.rollback()
            explain_statements(
                database, label, [s for s in statements if "SET status = 'running', claim_token" not in s[0]]
            )
    worker.conn.close()
    for operation, samples in time_api(
        url, args.repeat, args.budget_seconds, workdir, database if explain else None
    ).items():
        timings[operation] = samples
    database.dispose()
    return SizeResult(jobs, timings)


def time_api(
    url: str, repeat: int, budget_seconds: float, workdir: Path, explain_on: db.Database | None
) -> dict[str, list[float]]:
    """Start the API on ``url`` and time its GETs; the plans of ``GET /jobs`` from the same store call."""
    port = common.free_port()
    env = dict(os.environ, JOBRUNNER_DATABASE_URL=url, JOBRUNNER_BROKER_URL=common.redis_url(13))
    log = workdir / f"api-{port}.log"
    argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port), "--log-level", "warning"]
    api = common.spawn(argv, env=env, log_path=log)
    timings: dict[str, list[float]] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        common.wait_for_http(f"{base}/healthz", proc=api, log_path=log)
        with httpx.Client(base_url=base, timeout=60) as client:
            for operation in http_operations(client):
                timings[operation.name] = time_operation(operation, repeat, budget_seconds)
                report(operation.name, timings[operation.name])
    finally:
        common.stop(api)
    if explain_on is not None:
        explain_list_queries(explain_on)
    return timings


def explain_list_queries(database: db.Database) -> None:
    """The plans of what ``GET /jobs`` runs (``store.list_jobs``) for each filter."""
    filters: list[dict[str, Any]] = [{}] + [{"status": status} for status in JobStatus]
    filters += [{"kind": "kind7"}, {"kind": "kind7", "status": JobStatus.FAILED}, {"kind": "incident"}]
    with database.readers() as session:
        _, cursor = store.list_jobs(session)
    filters.append({"cursor": cursor})
    for given in filters:
        with captured_statements(database) as statements, database.readers() as session:
            store.list_jobs(session, **given)
        label = "&".join(f"{key}={getattr(value, 'value', value)}" for key, value in given.items())
        explain_statements(database, f"GET /jobs?{label if 'cursor' not in given else 'cursor=<page 2>'}", statements)


# --- the report -------------------------------------------------------------------------------------


def print_table(results: list[SizeResult]) -> None:
    small, big = results[0], results[-1]
    header = f"{'operation':44}" + "".join(f"{f'p50/p99 at {r.jobs:,}':>26}" for r in results) + f"{'p99 ratio':>11}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, samples in small.timings.items():
        cells = ""
        for result in results:
            values = result.timings[name]
            cells += f"{statistics.median(values):>11.2f} / {bigfill.percentile(values, 0.99):>8.2f} ms"
        ratio = bigfill.percentile(big.timings[name], 0.99) / bigfill.percentile(samples, 0.99)
        flag = "" if ratio <= TARGET_RATIO else "  over"
        print(f"{name:44}{cells}{ratio:>10.2f}x{flag}")
    print(f"(target: p99 at {big.jobs:,} <= {TARGET_RATIO:.0f}x p99 at {small.jobs:,})")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="10000,10000000", help="rows in jobs, smallest first (default 10000,10000000)"
    )
    parser.add_argument("--repeat", type=int, default=100, help="timed runs of each operation (default 100)")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=60.0,
        help="stop repeating an operation after this long (at least 10 runs; default 60)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases, and reuse those an earlier --keep run filled"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in sizes:
            print(f"\n== {size:,} jobs", flush=True)
            results.append(measure_size(size, args, explain=size == sizes[-1], workdir=Path(workdir)))
    print_table(results)
    print(f"\nplans at {sizes[-1]:,} jobs (EXPLAIN ANALYZE, COSTS OFF, TIMING OFF):")
    print("\n".join(PLANS))
    print(f"load average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        common.stop_all()
