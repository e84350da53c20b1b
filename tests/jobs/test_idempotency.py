"""jobs.idempotency: two transactions with one key made to meet on purpose, on the real database."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, select, text

from jobs import db, errors, idempotency, models, store
from tests.acceptance.conftest import CLAIM
from tests.worker.processes import wait_until


def _count(database, model) -> int:
    with database.readers() as session:
        return session.scalar(select(func.count()).select_from(model))


def _create(session) -> idempotency.Answer:
    job = store.create_job(session, "noop")
    return idempotency.Answer(job_id=job.id, status=job.status)


def _failed_job(database, make_job) -> uuid.UUID:
    job_id = make_job("fail")
    with database.engine.connect() as conn:
        job = store.claim_job(conn, job_id, **CLAIM)
    with db.session_scope(database.sessions) as session:
        store.record_failure(session, job, errors.PermanentError("failed on purpose"), backoff_seconds=0)
    return job_id


def _replay(job_id: uuid.UUID):
    def act(session) -> idempotency.Answer:
        job = store.replay_job(session, job_id)
        return idempotency.Answer(job_id=job.id, status=job.status)

    return act


def _others_waiting_on_a_lock(database) -> bool:
    with database.engine.connect() as conn:
        return bool(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )


@pytest.mark.parametrize("operation", ["create", "replay"])
def test_of_two_racing_requests_with_one_key_the_second_gets_the_first_answer(database, make_job, operation):
    act = _create if operation == "create" else _replay(_failed_job(database, make_job))
    key, request = str(uuid.uuid4()), idempotency.request_hash(operation, {"n": 1})
    first = database.sessions()
    second: dict[str, object] = {}

    def run_second() -> None:
        with database.sessions() as session:
            try:
                second["answer"] = idempotency.answer_once(
                    session, key, request, ttl_seconds=60, act=lambda: act(session)
                )
                session.commit()
            except Exception as exc:  # reported below
                second["error"] = exc

    try:
        answer = idempotency.answer_once(first, key, request, ttl_seconds=60, act=lambda: act(first))
        thread = threading.Thread(target=run_second)
        thread.start()
        if not database.is_sqlite:
            # The second has found no key and done its own work; its write now waits for the first's
            # (SQLite: its transaction waits to begin, and then finds the first's key).
            wait_until(lambda: _others_waiting_on_a_lock(database), timeout=60, what="the second to wait")
        first.commit()
    finally:
        first.close()
    thread.join(timeout=120)
    assert "error" not in second, repr(second.get("error"))
    assert second["answer"] == answer
    assert _count(database, models.IdempotencyKey) == 1
    if operation == "create":
        assert _count(database, models.Job) == 1
    else:
        with database.readers() as session:
            history = store.list_attempts(session, answer.job_id)
        assert [a.outcome for a in history].count(models.AttemptOutcome.REPLAYED) == 1


def test_a_key_and_its_job_commit_or_roll_back_together(database):
    request = idempotency.request_hash("create", {})
    with database.sessions() as session:
        idempotency.answer_once(session, "k1", request, ttl_seconds=60, act=lambda: _create(session))
        session.rollback()
    assert _count(database, models.IdempotencyKey) == _count(database, models.Job) == 0
    with database.sessions() as session:
        answer = idempotency.answer_once(session, "k1", request, ttl_seconds=60, act=lambda: _create(session))
        session.commit()
    with database.readers() as session:
        row = session.get(models.IdempotencyKey, "k1")
        assert row is not None and row.job_id == answer.job_id
        assert store.get_job(session, answer.job_id).status == models.JobStatus.QUEUED


def test_the_request_hash_ignores_field_order_and_takes_any_input():
    assert idempotency.request_hash("op", {"a": 1, "b": [1, 2]}) == idempotency.request_hash(
        "op", {"b": [1, 2], "a": 1}
    )
    assert idempotency.request_hash("op", {"a": 1}) != idempotency.request_hash("other", {"a": 1})
    assert len(idempotency.request_hash("op", {"s": "a\ud800b", "f": float("nan"), "n": 10**100})) == 64
