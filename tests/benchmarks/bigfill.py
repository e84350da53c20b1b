"""A big ``jobs`` / ``job_attempts`` history filled inside PostgreSQL, shared by ``metrics_scrape.py``
and ``scale.py``.

The shape: ``jobs`` rows one every 0.1 s up to now (``kind0``..``kind19``, ``queue0``..``queue4``);
every ``jobs // unfinished``-th one not finished (``queued``, ``running`` or ``retrying`` in turn, the
running ones holding a lease that expires within a minute of the fill), every 37th of the others
``failed`` and the rest ``succeeded``; ``attempts_per_job`` attempts each (the last one ``succeeded``
or ``failed``, the others ``error``). The counter table gets as many rows as a busy fleet of 20
kinds makes: 16 shards x 20 kinds x (3 outcomes x 8 duration buckets + 4 more) = 8,960 rows.

The secondary indexes and the attempts' foreign key are dropped for the fill and built again after
it, the counting trigger is off for it, and it ends with ``VACUUM ANALYZE`` (what autovacuum does to
a real table: index-only scans need the visibility map).

:func:`filled_database` makes such a database, or with ``keep`` reuses one an earlier run filled
with the same shape (its comment says which), migrated to the newest revision either way.
"""

from __future__ import annotations

import atexit
import time
from collections.abc import Sequence

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.benchmarks import common

KINDS = 20
QUEUES = 5
#: Duration buckets a kind's attempts fall in (of the histogram's 17).
BUCKETS_USED = 8
#: Rows written per transaction during the fill.
FILL_STEP = 1_000_000
#: Seconds between two jobs' creation times.
SPACING_SECONDS = 0.1


def _secondary_indexes(conn, table: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t AND indexname NOT LIKE 'pk_%'"),
        {"t": table},
    )
    return [(row[0], row[1]) for row in rows]


def fill(url: str, *, jobs: int, unfinished: int, attempts_per_job: int) -> None:
    """Fill ``jobs``, ``job_attempts`` and ``attempt_counters`` of a freshly migrated database as
    the module doc says."""
    from jobs.observe.models import ATTEMPT_SHARDS  # here: see common's module doc

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    every = max(jobs // unfinished, 1)
    step = SPACING_SECONDS
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
       now() - make_interval(secs => ({jobs} - i) * {step}), now() - make_interval(secs => ({jobs} - i) * {step}),
       now() - make_interval(secs => ({jobs} - i) * {step} - 1),
       CASE WHEN i % {every} <> 0 THEN now() - make_interval(secs => ({jobs} - i) * {step} - 2) END,
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
SELECT md5(i::text)::uuid, 0, n, 'host:' || (i % 64), now() - make_interval(secs => ({jobs} - i) * {step} + 1),
       now() - make_interval(secs => ({jobs} - i) * {step}),
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
        vacuum_analyze(conn)
        print(f"  filled and indexed in {time.monotonic() - started:.0f} s", flush=True)
    engine.dispose()


def vacuum_analyze(conn) -> None:
    """``VACUUM ANALYZE`` the tables the fill wrote (``conn`` in autocommit mode)."""
    for table in ("jobs", "job_attempts", "attempt_counters"):
        conn.execute(text(f"VACUUM ANALYZE {table}"))


def filled_database(name: str, *, jobs: int, unfinished: int, attempts_per_job: int, keep: bool = False) -> str:
    """The URL of a database filled as the module doc says, migrated to the newest revision.

    Without ``keep``: this run's database ``name`` (see :func:`common.recreate_database`), dropped at
    exit. With ``keep``: the database ``name`` itself, kept at exit, and reused as it is (migrated,
    not filled again) when an earlier run filled it with the same shape; drop it by hand
    (``DROP DATABASE name``) when done.
    """
    from jobs import migrate  # here: see common's module doc

    shape = f"bigfill jobs={jobs} unfinished={unfinished} attempts_per_job={attempts_per_job}"
    if not keep:
        url = common.recreate_database(name)
    else:
        url = make_url(common.PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        admin = create_engine(common.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            comment = conn.execute(
                text("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if comment is not None and comment[0] == shape:
                admin.dispose()
                print(f"reusing {name} ({shape}); migrating it to the newest revision", flush=True)
                migrate.upgrade(url)
                return url
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        migrate.upgrade(url)
    print(f"filling {jobs:,} jobs ({unfinished:,} not finished), {jobs * attempts_per_job:,} attempts", flush=True)
    fill(url, jobs=jobs, unfinished=unfinished, attempts_per_job=attempts_per_job)
    if keep:
        with admin.connect() as conn:
            conn.execute(text(f"COMMENT ON DATABASE \"{name}\" IS '{shape}'"))
        admin.dispose()
    return url


def keep_nothing() -> None:
    """Forget the drops :func:`common.recreate_database` registered (``--keep`` of a script)."""
    atexit.unregister(common._admin)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.99: p99)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]
