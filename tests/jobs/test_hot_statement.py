"""``HotStatement``: the claim, the success and the PostgreSQL broker's take run straight on
psycopg's cursor on PostgreSQL (a fenced exception to SQLAlchemy's public API, measured in its
docstring). It must give what ``conn.execute`` gives, with the same type processing, on both
databases."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import bindparam, insert, update
from sqlalchemy import exc as sa_exc

from jobs import models, store
from jobs.store import running, taking
from jobs.store.base import HotStatement


def _claim_params(job_id: uuid.UUID) -> dict[str, object]:
    return {"b_job_id": job_id, "b_token": uuid.uuid4(), "b_lease_seconds": 30.0, "b_worker": "hot-test"}


def test_the_hot_claim_returns_what_conn_execute_returns(database, make_job):
    hot_id = make_job("test.note", {"text": "hot"})
    plain_id = make_job("test.note", {"text": "hot"})
    with database.engine.connect() as conn:
        with conn.begin():
            hot = running._HOT_CLAIM.first(conn, _claim_params(hot_id))
        with conn.begin():
            plain = conn.execute(running._CLAIM, _claim_params(plain_id)).first()
    assert hot is not None and plain is not None
    assert hot._fields == tuple(plain._fields)
    assert tuple(hot) == tuple(plain)
    assert [type(value) for value in hot] == [type(value) for value in plain]
    assert hot.args["text"] == "hot"


def test_a_returned_datetime_is_aware_utc_as_conn_execute_gives_it(database, make_job):
    job_id = make_job("noop")
    returning_started = HotStatement(running._SUCCEED)
    with database.engine.connect() as conn:
        job = store.claim_job(conn, job_id, worker_id="hot-test", lease_seconds=30)
        assert job is not None
        with conn.begin():
            row = returning_started.first(conn, {"b_job_id": job_id, "b_token": job.claim_token})
    assert row is not None and row.id == job_id
    assert row.started_at.tzinfo is not None and row.started_at.utcoffset() == dt.timedelta(0)


def test_a_naive_datetime_is_refused_before_anything_runs(database, make_job, fetch):
    job_id = make_job("noop")
    naive = dt.datetime.now() + dt.timedelta(seconds=30)
    jobs = models.Job.__table__
    delay = HotStatement(
        update(jobs)
        .where(jobs.c.id == bindparam("b_job_id"))
        .values(status="retrying", next_retry_at=bindparam("b_at", type_=models.UTCDateTime()))
        .returning(jobs.c.id)
    )
    with database.engine.connect() as conn, pytest.raises(sa_exc.StatementError, match="naive datetimes"), conn.begin():
        delay.first(conn, {"b_job_id": job_id, "b_at": naive})
    assert fetch(job_id)[0].status == "queued"


def test_a_database_error_comes_out_as_sqlalchemys(database, make_job):
    attempts = models.JobAttempt.__table__
    # An attempt row missing its NOT NULL columns: the database refuses it.
    incomplete = HotStatement(insert(attempts).values(job_id=bindparam("b_job_id")).returning(attempts.c.id))
    job_id = make_job("noop")
    with database.engine.connect() as conn, pytest.raises(sa_exc.IntegrityError), conn.begin():
        incomplete.first(conn, {"b_job_id": job_id})


@pytest.mark.postgres_only  # the take is the PostgreSQL broker's
def test_the_hot_take_returns_every_row_conn_execute_returns(database, make_job):
    # Six jobs: the oldest three taken through the hot statement, the others through conn.execute.
    ids = [make_job("test.note", {"text": str(number % 3)}) for number in range(6)]
    with database.readers() as session:
        queue = session.get(models.Job, ids[0]).queue
    params = {
        "b_queue": queue,
        "b_limit": 3,
        "b_lease_seconds": 30.0,
        "b_worker": "hot-test",
        "b_limited": [],
        "b_take_seconds": 30.0,
    }
    with database.engine.connect() as conn:
        with conn.begin():
            hot = taking._HOT_TAKE_AND_CLAIM.all(conn, params)
        with conn.begin():
            plain = conn.execute(taking._TAKE_AND_CLAIM, params).all()
    assert len(hot) == len(plain) == 3
    assert {row.id for row in hot} == set(ids[:3]) and {row.id for row in plain} == set(ids[3:])
    assert hot[0]._fields == tuple(plain[0]._fields)
    shape = lambda row: [type(value) for value in row]  # noqa: E731
    assert sorted(map(shape, hot), key=str) == sorted(map(shape, plain), key=str)
    assert {row.status for row in hot} == {row.status for row in plain} == {"running"}
    assert {row.args["text"] for row in hot} == {"0", "1", "2"}
