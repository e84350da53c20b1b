"""Job IDs go to the broker at the root transaction's commit, not when a SAVEPOINT inside it is
released (SQLAlchemy runs ``after_commit`` for both)."""

from __future__ import annotations

from jobs import db, store


def test_a_job_created_in_a_savepoint_is_sent_only_at_the_commit(database, queued_messages):
    with db.session_scope(database.sessions) as session:
        with session.begin_nested():
            store.create_job(session, "noop")
        assert queued_messages() == 0, "sent before the transaction committed"
    assert queued_messages() == 1
