"""Batch chunking: ``normalize`` over 1,000,000 records in chunk jobs against one set-based UPDATE.

What it measures (PostgreSQL database ``jobrunner_bench_batches``, dropped, re-created and migrated;
Redis db 6, flushed):

1. **data**: ``--records`` records (default 1,000,000) of a processed file, generated in SQL
   (``name``, ``email``, ``quantity``, ``city``: strings with spaces to trim, mixed-case emails,
   integer strings), then ``VACUUM ANALYZE``. A copy of the same rows goes to ``bench_set``.
2. **set-based** (the limit): one ``UPDATE bench_set SET data = <the same normalisation in SQL>``
   over every row, in one transaction; records/s = records / its duration.
3. **batch**: ``jobctl worker --processes 2 --threads 4`` (started, then warmed up with a ``noop``
   job so start-up is not counted); a ``normalize`` batch over the file with ``--chunk-size``
   (default 1,000). End to end = the batch row's ``finished_at - created_at``; planning = the
   ``batch.plan`` job's ``finished_at - created_at`` (queueing included). Records/s = records / end to end.
   Target: >= 25% of the set-based rate; planning < 10% of the end-to-end time.
4. **check**: rows whose data differs between ``records`` and ``bench_set`` (expected 0: both did
   the same normalisation).

The script never asserts: figures and targets are printed. Every process it starts is stopped on
exit. Run from the project root (PostgreSQL at 127.0.0.1:5432,
where it makes a database of its own; a redis-server of its own; both removed at exit)::

    .venv/bin/python tests/benchmarks/batch.py [--records N] [--chunk-size N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import redis
from sqlalchemy import text

from tests.benchmarks import common  # imports nothing of jobs

REDIS_URL = common.redis_url(6)
DB_NAME = "jobrunner_bench_batches"
DB_URL = common.database_url(DB_NAME)
JOBCTL = str(Path(sys.executable).parent / "jobctl")
#: Longest the batch may take.
TIMEOUT_SECONDS = 1800

# Set before jobs reads its settings (get_settings is cached on first use).
os.environ.update({"JOBRUNNER_DATABASE_URL": DB_URL, "JOBRUNNER_BROKER_URL": REDIS_URL})

from jobs import db, kinds, models, store
from jobs.config import get_settings
from jobs.kinds.batches import models as batch_models
from jobs.kinds.batches import service as batches
from jobs.kinds.files import models as file_models
from worker import producer

_GENERATE = text("""
INSERT INTO records (file_id, row_number, data, status)
SELECT :file_id, g, jsonb_build_object(
    'name', '  Name ' || g || ' ', 'email', ' User' || g || '@Example.COM ',
    'quantity', ' ' || (g % 1000) || ' ', 'city', ' City ' || (g % 100)), 'imported'
FROM generate_series(1, :n) AS g
""")
#: ``jobs.kinds.batches.service.normalize`` in SQL: trim strings, lower-case *email fields, integer strings to numbers.
_SET_BASED = text(r"""
UPDATE bench_set SET status = 'processed', data = (
  SELECT jsonb_object_agg(key, CASE
    WHEN jsonb_typeof(value) <> 'string' THEN value
    WHEN lower(key) LIKE '%email' THEN to_jsonb(lower(btrim(value #>> '{}', E' \t\n\r')))
    WHEN btrim(value #>> '{}', E' \t\n\r') ~ '^-?(0|[1-9][0-9]{0,17})$'
      THEN to_jsonb(btrim(value #>> '{}', E' \t\n\r')::bigint)
    ELSE to_jsonb(btrim(value #>> '{}', E' \t\n\r')) END)
  FROM jsonb_each(data))
""")


def make_records(database: db.Database, count: int) -> uuid.UUID:
    """A processed file with ``count`` generated records, and ``bench_set``: a copy of them."""
    file_id = uuid.uuid4()
    with db.session_scope(database.sessions) as session:
        session.add(
            file_models.File(
                id=file_id,
                name="bench.csv",
                size_bytes=0,
                sha256="0" * 64,
                storage_key=uuid.uuid4().hex,
                status=file_models.FileStatus.PROCESSED,
                rows_total=count,
                rows_imported=count,
                rows_rejected=0,
                row_errors=[],
                byte_offset=0,
                created_at=store.utcnow(),
            )
        )
        session.flush()
        session.execute(_GENERATE, {"file_id": file_id, "n": count})
        session.execute(text("CREATE TABLE bench_set AS SELECT id, data, status FROM records"))
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE records"))
        conn.execute(text("VACUUM ANALYZE bench_set"))
    return file_id


def run_set_based(database: db.Database) -> float:
    """The seconds one set-based UPDATE takes to normalise every row of ``bench_set``."""
    started = time.perf_counter()
    with database.engine.begin() as conn:
        conn.execute(_SET_BASED)
    return time.perf_counter() - started


def start_workers(workdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JOBRUNNER_SWEEP_INTERVAL_SECONDS": "600"}
    return common.spawn(
        [JOBCTL, "worker", "--processes", "2", "--threads", "4"], env=env, log_path=workdir / "worker.log"
    )


def wait_for(database: db.Database, model: type, row_id: uuid.UUID, done: tuple[str, ...]) -> models.Base:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        with database.sessions() as session:
            row = session.get(model, row_id)
            if row.status in done:
                return row
        time.sleep(0.2)
    raise TimeoutError(f"{model.__name__} {row_id} did not finish in {TIMEOUT_SECONDS} s")


def run_batch(database: db.Database, file_id: uuid.UUID, chunk_size: int) -> tuple[batch_models.Batch, models.Job]:
    with db.session_scope(database.sessions) as session:
        batch, _ = batches.create_batch(session, "normalize", file_id=file_id, chunk_size=chunk_size)
    batch = wait_for(database, batch_models.Batch, batch.id, tuple(batch_models.BATCH_TERMINAL))
    with database.sessions() as session:
        return batch, session.get(models.Job, batch.job_id)


def count_differences(database: db.Database) -> int:
    with database.engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM records r JOIN bench_set b USING (id) WHERE r.data <> b.data "
                "OR r.status <> b.status"
            )
        ).scalar_one()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=1_000)
    options = parser.parse_args()
    redis.Redis.from_url(REDIS_URL).flushdb()
    common.recreate_database(DB_NAME)
    get_settings.cache_clear()
    settings = get_settings()
    broker = producer.make_broker(settings)
    database = db.make_database(
        DB_URL,
        sender=producer.make_sender(broker),
        registry=kinds.load_registry(settings),
        application_name="jobrunner-bench",
    )
    workdir = Path(tempfile.mkdtemp(prefix="jobrunner-bench-batch-"))
    proc = None
    try:
        print(f"generating {options.records:,} records ...", flush=True)
        file_id = make_records(database, options.records)
        set_seconds = run_set_based(database)
        print(f"set-based UPDATE: {set_seconds:.2f} s, {options.records / set_seconds:,.0f} records/s", flush=True)
        proc = start_workers(workdir)
        with db.session_scope(database.sessions) as session:
            warm_up = store.create_job(session, "noop").id
        wait_for(database, models.Job, warm_up, tuple(models.TERMINAL))
        batch, plan = run_batch(database, file_id, options.chunk_size)
        report(options, batch, plan, set_seconds, count_differences(database))
    finally:
        if proc is not None:
            common.stop(proc)
        database.dispose()
        broker.close()
        print(f"worker log: {workdir / 'worker.log'}")


def report(
    options: argparse.Namespace, batch: batch_models.Batch, plan: models.Job, set_seconds: float, differences: int
) -> None:
    total = (batch.finished_at - batch.created_at).total_seconds()
    planning = (plan.finished_at - plan.created_at).total_seconds()
    rate, set_rate = batch.processed / total, options.records / set_seconds
    print(
        f"batch {batch.id}: {batch.status}, {batch.processed:,} processed, {batch.failed:,} failed, "
        f"{batch.chunks_done}/{batch.chunks_total} chunks of {options.chunk_size:,}"
    )
    print(f"end to end: {total:.2f} s, {rate:,.0f} records/s")
    print(f"  vs set-based: {rate / set_rate:.1%} of its {set_rate:,.0f} records/s (target >= 25%)")
    print(f"planning: {planning:.2f} s, {planning / total:.1%} of the end-to-end time (target < 10%)")
    print(f"rows whose result differs from the set-based UPDATE's: {differences:,} (expected 0)")


if __name__ == "__main__":
    main()
