"""Domain events through real Dramatiq workers: outbox, one job per handler, exactly-once effects."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, insert, select, update

from jobs import db, models, sending
from jobs.kinds.events import errors as event_errors
from jobs.kinds.events import models as event_models
from jobs.kinds.events import outbox as events
from jobs.kinds.events import shop as event_handlers
from jobs.models import JobStatus
from tests import kinds

#: A second handler of ``order_created`` (tests only): it writes a note, so that a failing product
#: handler can be seen to leave its sibling alone.
AUDIT_HANDLER = "test_audit"


@events.on("order_created", name=AUDIT_HANDLER)
def audit_order(session, event):
    session.execute(insert(kinds.notes).values(job_id=event.id, text=f"order {event.payload.order_id}"))


def _user(org_id: str, n: int) -> dict[str, str]:
    return {"org_id": org_id, "user_id": f"user-{n}", "email": f"user{n}@example.com"}


@pytest.fixture
def emit(database):
    """Emit one event in a committed session of its own."""

    def emit_one(type_name, payload, **options):
        with db.session_scope(database.sessions) as session:
            return events.emit(session, type_name, payload, **options)

    return emit_one


@pytest.fixture
def read(database):
    """Read one row of a model (or count rows, given a select) in a short session."""

    def get(model, key):
        with database.sessions() as session:
            return session.get(model, key)

    return get


@pytest.fixture
def ledger_count(database):
    def count(event_id=None):
        query = select(func.count()).select_from(event_models.EventApplication)
        if event_id is not None:
            query = query.where(event_models.EventApplication.event_id == event_id)
        with database.sessions() as session:
            return session.scalar(query)

    return count


@pytest.fixture
def product(database):
    """Create a product with a starting inventory; returns its ID."""

    def make(inventory: int, sku: str | None = None) -> uuid.UUID:
        with db.session_scope(database.sessions) as session:
            return event_handlers.create_product(session, sku=sku or f"sku-{uuid.uuid4()}", inventory=inventory).id

    return make


def test_distinct_user_registered_events_for_one_org_count_each_once(database, drain, read):
    with db.session_scope(database.sessions) as session:
        accepted = events.ingest(session, [events.NewEvent("user_registered", _user("acme", n)) for n in range(60)])
    drain()
    assert len({a.event_id for a in accepted}) == 60
    stats = read(event_models.OrgStats, "acme")
    assert stats.user_count == 60
    with database.sessions() as session:
        latest = session.scalar(select(func.max(event_models.Event.created_at)))
        statuses = session.scalars(select(models.Job.status).where(models.Job.kind == "event.handle")).all()
    assert stats.last_user_at == latest
    assert statuses == [JobStatus.SUCCEEDED] * 60


def test_event_gets_one_job_per_registered_handler(emit, database):
    accepted = emit("order_created", {"order_id": "o1", "product_id": str(uuid.uuid4()), "quantity": 1})
    with database.sessions() as session:
        jobs = session.scalars(select(models.Job).where(models.Job.id.in_(accepted.job_ids))).all()
    assert sorted(job.args["handler"] for job in jobs) == sorted(h.name for h in events.handlers_for("order_created"))
    assert {job.args["event_id"] for job in jobs} == {str(accepted.event_id)}
    assert {job.kind for job in jobs} == {"event.handle"}


def test_same_event_id_emitted_twice_is_stored_and_applied_once(emit, drain, read, ledger_count, database):
    event_id = uuid.uuid4()
    first = emit("user_registered", _user("dup-org", 1), event_id=event_id)
    second = emit("user_registered", _user("dup-org", 1), event_id=event_id)
    drain()
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.job_ids == first.job_ids
    assert read(event_models.OrgStats, "dup-org").user_count == 1
    assert ledger_count(event_id) == 1
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(event_models.Event)) == 1


def test_same_id_twice_in_one_call_is_stored_once(database, drain, read):
    event_id = uuid.uuid4()
    with db.session_scope(database.sessions) as session:
        accepted = events.ingest(
            session,
            [
                events.NewEvent("user_registered", _user("twice", 1), event_id),
                events.NewEvent("user_registered", _user("twice", 1), event_id),
            ],
        )
    drain()
    assert [a.duplicate for a in accepted] == [False, True]
    assert accepted[0].job_ids == accepted[1].job_ids
    assert read(event_models.OrgStats, "twice").user_count == 1


def test_two_concurrent_transactions_with_one_event_id_store_it_once(database, drain, read):
    event_id = uuid.uuid4()
    barrier = threading.Barrier(2)
    results: list[events.Accepted] = []

    def post() -> None:
        barrier.wait()
        with db.session_scope(database.sessions) as session:
            results.extend(events.ingest(session, [events.NewEvent("user_registered", _user("race", 1), event_id)]))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    drain()
    assert sorted(r.duplicate for r in results) == [False, True]
    assert results[0].job_ids == results[1].job_ids
    assert read(event_models.OrgStats, "race").user_count == 1


def test_duplicated_handle_message_is_applied_once(database, emit, drain, read, ledger_count, fetch):
    accepted = emit("user_registered", _user("redelivered", 1))
    with db.session_scope(database.sessions) as session:
        for _ in range(3):  # the same ID again, three times, while the first may be running
            sending.send_after_commit(session, sending.JobMessage(accepted.job_ids[0], "default"))
    drain()
    job, history = fetch(accepted.job_ids[0])
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert read(event_models.OrgStats, "redelivered").user_count == 1
    assert ledger_count(accepted.event_id) == 1


def _replay_by_hand(database, job_id: uuid.UUID) -> None:
    """Put a succeeded job back to queued behind the runner's back and send it again: only the
    ledger stands between it and a second application."""
    with db.session_scope(database.sessions) as session:
        session.execute(
            update(models.Job)
            .where(models.Job.id == job_id)
            .values(status=JobStatus.QUEUED, claim_token=None, finished_at=None)
        )
        sending.send_after_commit(session, sending.JobMessage(job_id, "default"))


def test_job_replayed_by_hand_does_not_apply_its_event_twice(database, emit, product, drain, read, fetch, ledger_count):
    product_id = product(10)
    accepted = emit("order_created", {"order_id": "o-1", "product_id": str(product_id), "quantity": 3})
    drain()
    before = read(event_models.Product, product_id)
    assert (before.inventory, before.sales_count) == (7, 1)
    product_job = next(j for j in accepted.job_ids if fetch(j)[0].args["handler"] == event_handlers.PRODUCT_HANDLER)
    _replay_by_hand(database, product_job)
    drain()
    job, history = fetch(product_job)
    assert job.status == JobStatus.SUCCEEDED
    assert [a.outcome for a in history] == ["succeeded", "succeeded"]  # it ran again...
    after = read(event_models.Product, product_id)
    assert (after.inventory, after.sales_count) == (7, 1)  # ...and changed nothing
    assert ledger_count(accepted.event_id) == len(accepted.job_ids)


def test_order_beyond_inventory_fails_its_handler_only_and_leaves_the_product(
    emit, product, drain, read, fetch, count_notes
):
    product_id = product(5)
    accepted = emit("order_created", {"order_id": "big", "product_id": str(product_id), "quantity": 6})
    drain()
    jobs = {fetch(j)[0].args["handler"]: fetch(j)[0] for j in accepted.job_ids}
    failed = jobs[event_handlers.PRODUCT_HANDLER]
    assert (failed.status, failed.attempts) == (JobStatus.FAILED, 1)  # permanent: no retry
    assert failed.error_type == "jobs.kinds.events.errors.NotEnoughInventory"
    assert failed.error_message == f"order big wants 6 of product {product_id}, which has 5"
    assert jobs[AUDIT_HANDLER].status == JobStatus.SUCCEEDED
    assert count_notes(accepted.event_id) == 1
    unchanged = read(event_models.Product, product_id)
    assert (unchanged.inventory, unchanged.sales_count) == (5, 0)


def test_order_for_a_missing_product_fails_for_good(emit, drain, fetch):
    accepted = emit("order_created", {"order_id": "x", "product_id": str(uuid.uuid4()), "quantity": 1})
    drain()
    jobs = {fetch(j)[0].args["handler"]: fetch(j)[0] for j in accepted.job_ids}
    assert jobs[event_handlers.PRODUCT_HANDLER].status == JobStatus.FAILED
    assert "no product" in jobs[event_handlers.PRODUCT_HANDLER].error_message


def test_event_emitted_in_a_rolled_back_session_leaves_nothing(database, queued_messages):
    with database.sessions() as session:
        events.emit(session, "user_registered", _user("ghost", 1))
        session.flush()
        session.rollback()
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(event_models.Event)) == 0
        assert session.scalar(select(func.count()).select_from(models.Job)) == 0
    assert queued_messages() == 0


def test_job_that_emits_then_fails_leaves_no_event(make_job, drain, database, fetch, read):
    job_id = make_job("test.emit_then_fail")
    drain()
    assert fetch(job_id)[0].status == JobStatus.FAILED
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(event_models.Event)) == 0
        assert session.scalar(select(func.count()).select_from(models.Job)) == 1
    assert read(event_models.OrgStats, "rolled-back") is None


def test_job_that_emits_and_succeeds_has_its_event_handled(make_job, drain, read):
    make_job("test.emit")
    drain()
    assert read(event_models.OrgStats, "from-a-job").user_count == 1


def test_file_and_batch_events_record_one_notification_each(emit, drain, database):
    file_id, batch_id = uuid.uuid4(), uuid.uuid4()
    emit("file.processed", {"file_id": str(file_id), "records": 10, "errors": 2})
    emit("batch.completed", {"batch_id": str(batch_id), "total": 10, "processed": 9, "failed": 1})
    drain()
    with database.sessions() as session:
        messages = sorted(n.message for n in session.scalars(select(event_models.Notification)))
    assert messages == [
        f"batch {batch_id} completed: 9 of 10 processed, 1 failed",
        f"file {file_id} processed: 10 records, 2 errors",
    ]


@pytest.mark.parametrize(
    ("new_events", "needle"),
    [
        (
            [("user_registered", _user("o", 1)), ("no.such.type", {})],
            "event 1: type: unknown event type: 'no.such.type'",
        ),
        (
            [("order_created", {"order_id": "o", "product_id": str(uuid.uuid4()), "quantity": 0})],
            "event 0 (order_created): payload.quantity: Input should be greater than 0",
        ),
        (
            [("user_registered", {"org_id": "o", "user_id": "u", "email": "u@x", "extra": 1})],
            "event 0 (user_registered): payload.extra: Extra inputs are not permitted",
        ),
    ],
)
def test_invalid_event_stores_nothing_and_names_index_and_field(database, queued_messages, new_events, needle):
    with database.sessions() as session:
        with pytest.raises(event_errors.InvalidEvent) as raised:
            events.ingest(session, [events.NewEvent(t, p) for t, p in new_events])
        session.commit()
    assert needle in str(raised.value)
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(event_models.Event)) == 0
    assert queued_messages() == 0


def test_handler_registry_refuses_clashes():
    with pytest.raises(ValueError, match="before its handlers"):
        events.on("never.registered")(audit_order)
    with pytest.raises(ValueError, match="already has a handler"):
        events.on("order_created", name=AUDIT_HANDLER)(lambda session, event: None)
