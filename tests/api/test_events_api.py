"""``/events``, ``/products`` and ``/orgs/{org_id}/stats`` through the real app, database and Redis."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from api.deps import SessionDep
from jobs import models
from jobs.kinds.events import errors as event_errors
from jobs.kinds.events import models as event_models
from jobs.kinds.events import outbox as events


def _user(n: int, org: str = "acme") -> dict:
    return {"type": "user_registered", "payload": {"org_id": org, "user_id": f"u{n}", "email": f"u{n}@example.com"}}


def _count(database, model) -> int:
    with database.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_one_event_in_one_answer_out_and_handled(client, drain):
    response = client.post("/events", json=_user(1))
    assert response.status_code == 202
    body = response.json()
    assert body["duplicate"] is False and len(body["job_ids"]) == len(events.handlers_for("user_registered"))
    drain()
    stats = client.get("/orgs/acme/stats").json()
    assert stats["user_count"] == 1 and stats["last_user_at"] is not None
    event = client.get(f"/events/{body['event_id']}").json()
    assert event["type"] == "user_registered" and event["payload"]["user_id"] == "u1"
    assert [(h["job_id"], h["status"]) for h in event["handlers"]] == [(body["job_ids"][0], "succeeded")]
    assert event["handlers"][0]["applied_at"] is not None


def test_a_list_in_a_list_out_in_one_transaction(client, drain, database):
    response = client.post("/events", json=[_user(n) for n in range(100)])
    assert response.status_code == 202
    answers = response.json()
    assert len(answers) == 100 and not any(a["duplicate"] for a in answers)
    assert _count(database, event_models.Event) == 100
    assert _count(database, models.Job) == sum(len(a["job_ids"]) for a in answers)
    drain()
    assert client.get("/orgs/acme/stats").json()["user_count"] == 100


def test_repeated_id_is_stored_once_and_answers_its_first_jobs(client, drain, database):
    event = {"id": str(uuid.uuid4()), **_user(1)}
    first = client.post("/events", json=event)
    second = client.post("/events", json=event)
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json() == {**first.json(), "duplicate": True}
    mixed = client.post("/events", json=[event, _user(2)])
    assert mixed.status_code == 202
    assert [a["duplicate"] for a in mixed.json()] == [True, False]
    drain()
    assert _count(database, event_models.Event) == 2
    assert client.get("/orgs/acme/stats").json()["user_count"] == 2


def test_invalid_event_anywhere_is_422_naming_index_and_field_and_stores_nothing(client, database, queued_messages):
    bad_payload = [
        _user(0),
        _user(1),
        {"type": "order_created", "payload": {"order_id": "o", "product_id": str(uuid.uuid4()), "quantity": -1}},
    ]
    response = client.post("/events", json=bad_payload)
    assert response.status_code == 422
    assert response.json()["detail"] == "event 2 (order_created): payload.quantity: Input should be greater than 0"
    unknown = client.post("/events", json=[_user(0), {"type": "nope", "payload": {}}])
    assert unknown.status_code == 422 and unknown.json()["detail"].startswith("event 1: type: unknown event type")
    bad_id = client.post("/events", json=[_user(0), {**_user(1), "id": "not-a-uuid"}])
    assert bad_id.status_code == 422
    assert any(e["loc"][-2:] == [1, "id"] for e in bad_id.json()["detail"])
    too_many = client.post("/events", json=[_user(n) for n in range(events.MAX_EVENTS_PER_CALL + 1)])
    assert too_many.status_code == 422
    assert client.post("/events", json=[]).status_code == 422
    assert _count(database, event_models.Event) == 0 and _count(database, models.Job) == 0
    assert queued_messages() == 0


def test_products_read_their_projection_and_refuse_a_second_sku(client, drain):
    created = client.post("/products", json={"sku": "widget", "inventory": 10})
    assert created.status_code == 201
    product = created.json()
    assert (product["inventory"], product["sales_count"]) == (10, 0)
    assert client.post("/products", json={"sku": "widget", "inventory": 1}).status_code == 409
    order = {"type": "order_created", "payload": {"order_id": "o1", "product_id": product["id"], "quantity": 3}}
    assert client.post("/events", json=order).status_code == 202
    drain()
    after = client.get(f"/products/{product['id']}").json()
    assert (after["inventory"], after["sales_count"], after["initial_inventory"]) == (7, 1, 10)
    assert client.get(f"/products/{uuid.uuid4()}").status_code == 404
    assert client.post("/products", json={"sku": "x", "inventory": -1}).status_code == 422


def test_unknown_event_is_404_and_unknown_org_has_no_users(client):
    assert client.get(f"/events/{uuid.uuid4()}").status_code == 404
    assert client.get("/orgs/nobody/stats").json() == {"org_id": "nobody", "user_count": 0, "last_user_at": None}


def test_route_that_emits_then_fails_leaves_no_event_no_job_nothing_sent(settings, database, queued_messages):
    app = create_app(settings)

    @app.post("/test/emit-then-fail")
    def emit_then_fail(session: SessionDep) -> None:
        events.emit(session, "user_registered", {"org_id": "o", "user_id": "u", "email": "u@example.com"})
        session.flush()
        raise event_errors.InvalidEvent("failing after the emit, before any commit")

    with TestClient(app) as client:
        assert client.post("/test/emit-then-fail").status_code == 422
    assert _count(database, event_models.Event) == 0 and _count(database, models.Job) == 0
    assert queued_messages() == 0


def test_openapi_lists_every_status_code_of_the_event_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        ("/events", "post"): {"200", "202", "401", "413", "422", "503"},
        ("/events/{event_id}", "get"): {"200", "401", "404", "422", "503"},
        ("/products", "post"): {"201", "401", "409", "413", "422", "503"},
        ("/products/{product_id}", "get"): {"200", "401", "404", "422", "503"},
        ("/orgs/{org_id}/stats", "get"): {"200", "401", "422", "503"},
    }
    for (path, method), codes in expected.items():
        assert set(paths[path][method]["responses"]) == codes, (path, method)


def test_events_and_jobs_are_committed_and_sent_before_the_answer(client, database, queued_messages):
    answers = client.post("/events", json=[_user(n) for n in range(10)]).json()
    assert _count(database, event_models.Event) == 10
    assert queued_messages() == sum(len(a["job_ids"]) for a in answers) == 10


def test_internal_event_types_are_refused_naming_them_and_store_nothing(client, database, queued_messages):
    assert events.internal_types() == ["batch.completed", "file.processed"]
    forged = [
        {"type": "file.processed", "payload": {"file_id": str(uuid.uuid4())}},
        {"type": "batch.completed", "payload": {"batch_id": str(uuid.uuid4())}},
    ]
    for event in forged:
        response = client.post("/events", json=event)
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert f"'{event['type']}' is internal" in detail
        assert "internal types: batch.completed, file.processed" in detail
        assert "public types: order_created, user_registered" in detail
    mixed = client.post("/events", json=[_user(0), forged[0]])
    assert mixed.status_code == 422 and mixed.json()["detail"].startswith("event 1: type: 'file.processed' is internal")
    assert _count(database, event_models.Event) == 0 and _count(database, models.Job) == 0
    assert _count(database, event_models.Notification) == 0
    assert queued_messages() == 0


def test_the_runner_still_emits_its_internal_events(session):
    accepted = events.emit(session, "file.processed", {"file_id": str(uuid.uuid4())})
    session.commit()
    assert len(accepted.job_ids) == len(events.handlers_for("file.processed")) == 1


def test_openapi_lists_only_the_public_event_types(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["EventIn"]["properties"]["type"]["enum"] == ["order_created", "user_registered"]
