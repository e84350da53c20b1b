"""The newest migration goes down and up again on the run's database kind, with what it adds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text

from jobs import migrate
from tests import servers
from tests.conftest import BACKEND, PG_ADMIN_URL

#: The indexes migration 0014 adds, by table.
SCALE_INDEXES = {
    "jobs": {"ix_jobs_running_lease", "ix_jobs_claimable_enqueued_at", "ix_jobs_failed_kind_finished_at"},
    "batch_chunks": {"ix_batch_chunks_job_id"},
    "batches": {"ix_batches_job_id"},
}


@pytest.fixture
def empty_url(tmp_path) -> Iterator[str]:
    """A database of its own, empty (not the run's shared one: this test changes its schema)."""
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    database = servers.PrivateDatabase(PG_ADMIN_URL)
    try:
        yield database.url
    finally:
        database.drop()


def _indexes(url: str) -> dict[str, set[str]]:
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        return {table: {index["name"] for index in inspector.get_indexes(table)} for table in SCALE_INDEXES}
    finally:
        engine.dispose()


def _attempt_counted(url: str) -> int:
    """Insert a job and an attempt; what the attempt-counting trigger of 0011 counted for it."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (id, kind, queue, args, status, attempts, max_attempts, created_at, replay_count)"
                    " VALUES ('00000000-0000-0000-0000-000000000001', 'k', 'q', '{}', 'succeeded', 1, 1,"
                    " CURRENT_TIMESTAMP, 0)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO job_attempts (job_id, run, number, finished_at, outcome)"
                    " VALUES ('00000000-0000-0000-0000-000000000001', 0, 1, CURRENT_TIMESTAMP, 'succeeded')"
                )
            )
            return int(conn.execute(text("SELECT coalesce(sum(count), 0) FROM attempt_counters")).scalar_one())
    finally:
        engine.dispose()


def test_the_scale_indexes_go_down_and_up_again_leaving_the_attempt_trigger_in_place(empty_url):
    migrate.upgrade(empty_url)
    for table, names in SCALE_INDEXES.items():
        assert names <= _indexes(empty_url)[table]

    migrate.downgrade(empty_url, "0013")
    for table, names in SCALE_INDEXES.items():
        assert not names & _indexes(empty_url)[table]

    migrate.upgrade(empty_url)
    for table, names in SCALE_INDEXES.items():
        assert names <= _indexes(empty_url)[table]
    assert _attempt_counted(empty_url) == 1
