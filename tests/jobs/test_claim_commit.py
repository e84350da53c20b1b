"""PostgreSQL: the claim commits without waiting for its WAL flush; the job's outcome waits for it
(see ``jobs.store.running._CLAIM_COMMITS_ASYNC`` for why that is safe)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from jobs import db, store

pytestmark = pytest.mark.postgres_only


@pytest.fixture
def commit_settings(database: db.Database) -> Iterator[list[tuple[str, str]]]:
    """Each update of a job's status, with the ``synchronous_commit`` its transaction commits with
    (read by a trigger of the test's own, dropped afterwards)."""
    statements = [
        "CREATE TABLE test_commit_settings (n serial PRIMARY KEY, status text, setting text)",
        "CREATE FUNCTION test_log_commit_setting() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO test_commit_settings (status, setting) "
        "VALUES (NEW.status, current_setting('synchronous_commit')); RETURN NEW; END $$",
        "CREATE TRIGGER test_log_commit_setting AFTER UPDATE OF status ON jobs "
        "FOR EACH ROW EXECUTE FUNCTION test_log_commit_setting()",
    ]
    with database.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    log: list[tuple[str, str]] = []
    yield log
    with database.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER test_log_commit_setting ON jobs"))
        conn.execute(text("DROP FUNCTION test_log_commit_setting()"))
        conn.execute(text("DROP TABLE test_commit_settings"))


def _logged(database: db.Database) -> list[tuple[str, str]]:
    with database.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text("SELECT status, setting FROM test_commit_settings ORDER BY n"))]


def test_the_claim_commits_asynchronously_and_the_success_synchronously(database, make_job, commit_settings):
    job_id = make_job("noop")
    with database.engine.connect() as conn:
        job = store.claim_job(conn, job_id, worker_id="commit-test", lease_seconds=30)
        assert job is not None
        with database.sessions(bind=conn) as session:
            assert store.complete_job(session.connection(), job)
            session.commit()
        # A later transaction on the same connection commits as the server is set again.
        assert conn.execute(text("SHOW synchronous_commit")).scalar_one() == "on"
    assert _logged(database) == [("running", "off"), ("succeeded", "on")]


def test_a_failure_is_recorded_with_a_synchronous_commit(database, make_job, commit_settings):
    job_id = make_job("noop", max_attempts=1)
    with database.engine.connect() as conn:
        job = store.claim_job(conn, job_id, worker_id="commit-test", lease_seconds=30)
    assert job is not None
    with db.session_scope(database.sessions) as session:
        store.record_failure(session, job, RuntimeError("boom"), backoff_seconds=0)
    assert _logged(database) == [("running", "off"), ("failed", "on")]
