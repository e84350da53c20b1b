"""Rebuilding projections from their initial rows and the ledger."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete, select, update

from jobs import db, models, sending, store
from jobs.kinds.events import errors as event_errors
from jobs.kinds.events import models as event_models
from jobs.kinds.events import outbox as events
from jobs.kinds.events import projections
from jobs.kinds.events import shop as event_handlers
from jobs.models import JobStatus


def _snapshot(database):
    with database.sessions() as session:
        products = {p.id: (p.inventory, p.sales_count) for p in session.scalars(select(event_models.Product))}
        orgs = {o.org_id: (o.user_count, o.last_user_at) for o in session.scalars(select(event_models.OrgStats))}
    return products, orgs


def _rebuild(database, name, *, dry_run=False):
    with db.session_scope(database.sessions) as session:
        return projections.rebuild_projection(session, name, dry_run=dry_run)


def _handle_jobs(database, status=None):
    query = select(models.Job.id).where(models.Job.kind == events.HANDLE_KIND)
    if status is not None:
        query = query.where(models.Job.status == status)
    with database.sessions() as session:
        return list(session.scalars(query))


def test_rebuild_equals_live_after_redeliveries_and_replays(database, drain):
    with db.session_scope(database.sessions) as session:
        products = [event_handlers.create_product(session, sku=f"sku-{n}", inventory=20).id for n in range(3)]
        new_events = [
            events.NewEvent(
                "user_registered", {"org_id": f"org-{n % 4}", "user_id": f"u{n}", "email": f"u{n}@example.com"}
            )
            for n in range(40)
        ]
        new_events += [
            events.NewEvent(
                "order_created", {"order_id": f"o{n}", "product_id": str(products[n % 3]), "quantity": 1 + n % 7}
            )
            for n in range(30)
        ]
        events.ingest(session, new_events)
        # Every handler job's message delivered twice.
        for job_id in session.scalars(select(models.Job.id).where(models.Job.kind == events.HANDLE_KIND)):
            sending.send_after_commit(session, sending.JobMessage(job_id, "default"))
    drain()
    failed = _handle_jobs(database, JobStatus.FAILED)
    assert failed, "some orders should have exceeded the inventory"
    succeeded = _handle_jobs(database, JobStatus.SUCCEEDED)
    live = _snapshot(database)

    # Replays: the failed jobs through the runner, ten succeeded ones by hand behind its back.
    with db.session_scope(database.sessions) as session:
        store.replay_jobs(session, failed, reason="test")
        session.execute(
            update(models.Job)
            .where(models.Job.id.in_(succeeded[:10]))
            .values(status=JobStatus.QUEUED, claim_token=None)
        )
        for job_id in succeeded[:10]:
            sending.send_after_commit(session, sending.JobMessage(job_id, "default"))
    drain()

    assert _snapshot(database) == live
    for name in ("products", "orgs"):
        report = _rebuild(database, name, dry_run=True)
        assert report.matched, report
    assert _rebuild(database, "products").rows == 3
    assert _snapshot(database) == live


def test_rebuild_repairs_a_projection_that_drifted(database, drain):
    with db.session_scope(database.sessions) as session:
        product_id = event_handlers.create_product(session, sku="drift", inventory=10).id
        events.emit(session, "order_created", {"order_id": "o", "product_id": str(product_id), "quantity": 4})
        events.emit(session, "user_registered", {"org_id": "drift-org", "user_id": "u", "email": "u@example.com"})
    drain()
    live = _snapshot(database)
    with db.session_scope(database.sessions) as session:
        session.execute(update(event_models.Product).values(inventory=99))
        session.execute(delete(event_models.OrgStats))
        session.add(event_models.OrgStats(org_id="stray", user_count=5))
    products = _rebuild(database, "products")
    orgs = _rebuild(database, "orgs")
    assert (products.changed, products.missing) == ([product_id], [])
    assert (orgs.missing, orgs.extra) == (["drift-org"], ["stray"])
    assert _snapshot(database) == live
    assert live[0][product_id] == (6, 1)


def test_rebuild_of_an_unknown_projection_is_refused(database):
    with pytest.raises(event_errors.UnknownProjection, match="known: orgs, products"):
        _rebuild(database, "nope")


def test_event_ids_in_the_ledger_are_unique_per_handler(database, drain):
    event_id = uuid.uuid4()
    with db.session_scope(database.sessions) as session:
        events.emit(
            session, "user_registered", {"org_id": "l", "user_id": "u", "email": "u@example.com"}, event_id=event_id
        )
    drain()
    with database.sessions() as session:
        rows = (
            session.execute(
                select(event_models.EventApplication.handler).where(event_models.EventApplication.event_id == event_id)
            )
            .scalars()
            .all()
        )
    assert rows == [event_handlers.ORG_HANDLER]
