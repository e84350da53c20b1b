"""The worker's pool pings only a connection that sat idle (no round trip per job), and the claim
replaces a pooled connection that died meanwhile instead of skipping the job's message."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import pytest
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc

from jobs import db, store
from jobs.config import Settings
from jobs.models import JobStatus
from jobs.registry import Registry
from worker import broker as worker_broker

pytestmark = pytest.mark.postgres_only

#: application_name of this module's unpinged pools, to find (and end) their server connections.
UNPINGED = "jobrunner-test-unpinged"


def _end_connections(admin: Engine, application_name: str) -> int:
    """End, on the server, every connection of ``application_name`` (only this test's pool has it)."""
    with admin.connect() as conn:
        ended = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"
            ),
            {"name": application_name},
        ).scalar_one()
        conn.commit()
    return int(ended)


@pytest.fixture
def unpinged(settings: Settings, kind_registry: Registry, database: db.Database) -> Iterator[db.Database]:
    """A worker database whose pool never pings (a day of idle time allowed)."""
    pool = db.make_database(
        settings.database_url,
        pool_size=2,
        registry=kind_registry,
        application_name=UNPINGED,
        ping_after_idle_seconds=86_400,
    )
    yield pool
    pool.dispose()


@pytest.mark.parametrize("idle_seconds, survives", [(0.0, True), (86_400.0, False)])
def test_a_pooled_connection_is_pinged_only_after_sitting_idle(settings, database, idle_seconds, survives):
    pool = db.make_engine(
        settings.database_url, pool_size=1, application_name=UNPINGED, ping_after_idle_seconds=idle_seconds
    )
    try:
        with pool.connect() as conn:  # one connection, now back in the pool
            conn.execute(text("SELECT 1"))
        assert _end_connections(database.engine, UNPINGED) == 1
        with pool.connect() as conn:
            if survives:  # pinged at checkout, found dead, replaced
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
            else:  # taken as it is: the first statement finds it dead
                with pytest.raises(sa_exc.OperationalError):
                    conn.execute(text("SELECT 1"))
    finally:
        pool.dispose()


def test_a_claim_on_a_connection_that_died_in_the_pool_runs_the_job_on_a_fresh_one(
    settings, kind_registry, database, unpinged, fetch, caplog
):
    broker = worker_broker.make_worker_broker(settings, kind_registry, database=unpinged)
    dramatiq.set_broker(broker)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=10)
    worker.start()

    def drain() -> None:
        broker.join("default", timeout=30_000)
        worker.join()

    try:
        with db.session_scope(database.sessions) as session:
            first = store.create_job(session, "noop", {}).id
        drain()  # its claim and session leave the worker's connection in the pool
        assert _end_connections(database.engine, UNPINGED) >= 1
        with db.session_scope(database.sessions) as session:
            second = store.create_job(session, "noop", {}).id
        drain()
    finally:
        worker.stop()
        broker.close()
    assert fetch(first)[0].status == JobStatus.SUCCEEDED
    job, attempts = fetch(second)
    assert (job.status, job.attempts, len(attempts)) == (JobStatus.SUCCEEDED, 1, 1)
    assert "db_unreachable" not in caplog.text
