"""The HTTP API, called through the real app against the real database and Redis."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from jobs.config import Settings
from jobs.models import AttemptOutcome


@pytest.mark.brokers
def test_posted_job_reaches_succeeded_and_shows_its_attempt(client, drain):
    response = client.post("/jobs", json={"kind": "noop"})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    job_id = response.json()["job_id"]
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["attempts"] == 1
    assert [(a["number"], a["outcome"]) for a in job["history"]] == [(1, "succeeded")]
    assert job["created_at"].endswith("Z") or "+00:00" in job["created_at"]


@pytest.mark.brokers
def test_job_is_committed_before_the_202_is_sent(client, fetch, queued_messages):
    response = client.post("/jobs", json={"kind": "noop"})
    job, _ = fetch(uuid.UUID(response.json()["job_id"]))
    assert job.status == "queued"
    assert queued_messages() == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"kind": "no.such.kind"}, "unknown job kind 'no.such.kind'; public kinds: "),
        ({"kind": "test.internal"}, "job kind 'test.internal' is internal (not postable); public kinds: "),
        ({"kind": "fail", "args": {"fail_times": -1}}, "greater than or equal to 0"),
        ({"kind": "noop", "args": {"unexpected": 1}}, "Extra inputs are not permitted"),
    ],
)
def test_post_jobs_refuses_unknown_internal_kinds_and_bad_args(client, body, needle, queued_messages):
    response = client.post("/jobs", json=body)
    assert response.status_code == 422
    assert needle in str(response.json()["detail"])
    assert queued_messages() == 0


def test_an_unknown_kind_is_one_line_naming_the_public_kinds(client, kind_registry):
    public = sorted(kind.name for kind in kind_registry.all() if kind.public)
    assert "fail" in public and "noop" in public and "test.internal" not in public
    response = client.post("/jobs", json={"kind": "x"})
    assert response.status_code == 422
    assert response.json() == {"detail": f"unknown job kind 'x'; public kinds: {', '.join(public)}"}
    surrogate = client.post("/jobs", content=rb'{"kind": "no\ud800op"}', headers={"content-type": "application/json"})
    assert surrogate.status_code == 422
    # pydantic hands the tag back with the surrogate already replaced (U+FFFD).
    assert re.fullmatch(r"unknown job kind 'no.+op'; public kinds: .*", surrogate.json()["detail"])


def test_openapi_describes_each_public_kind_and_its_args(client):
    components = client.get("/openapi.json").json()["components"]["schemas"]
    assert components["FailJobRequest"]["properties"]["kind"]["const"] == "fail"
    assert "fail_times" in components["FailArgs"]["properties"]
    assert "TestInternalJobRequest" not in components  # internal kinds are not postable
    body = client.get("/openapi.json").json()["paths"]["/jobs"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["discriminator"]["propertyName"] == "kind"


def test_store_refuses_internal_kinds_when_asked_for_public_only(session):
    from jobs import errors, store

    with pytest.raises(errors.JobKindNotPublic):
        store.create_job(session, "test.internal", public_only=True)


def test_post_jobs_refuses_malformed_bodies_with_validation_details(client):
    response = client.post("/jobs", json={"args": {}})
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert client.post("/jobs", content=b"not json", headers={"content-type": "application/json"}).status_code == 422


def test_unknown_job_is_404_and_bad_id_422(client):
    assert client.get(f"/jobs/{uuid.uuid4()}").status_code == 404
    assert client.get("/jobs/not-a-uuid").status_code == 422
    assert client.post(f"/jobs/{uuid.uuid4()}/replay").status_code == 404


def test_replay_of_a_job_that_is_not_failed_is_409(client):
    job_id = client.post("/jobs", json={"kind": "noop"}).json()["job_id"]
    response = client.post(f"/jobs/{job_id}/replay")
    assert response.status_code == 409
    assert "only a failed job" in response.json()["detail"]


@pytest.mark.brokers
def test_replayed_failed_job_runs_again_and_keeps_its_history(client, drain):
    job_id = client.post("/jobs", json={"kind": "fail", "args": {"permanent": True}}).json()["job_id"]
    drain()
    assert client.get(f"/jobs/{job_id}").json()["status"] == "failed"
    response = client.post(f"/jobs/{job_id}/replay", json={"reason": "retry by hand"})
    assert response.status_code == 202 and response.json()["status"] == "queued"
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["replay_count"] == 1
    assert [(a["run"], a["outcome"]) for a in job["history"]] == [
        (0, AttemptOutcome.FAILED),
        (1, AttemptOutcome.REPLAYED),
        (1, AttemptOutcome.FAILED),
    ]


def test_list_jobs_filters_and_pages_newest_first(client):
    ids = [client.post("/jobs", json={"kind": "noop"}).json()["job_id"] for _ in range(5)]
    failing = client.post("/jobs", json={"kind": "fail"}).json()["job_id"]
    first = client.get("/jobs", params={"kind": "noop", "limit": 3}).json()
    second = client.get("/jobs", params={"kind": "noop", "limit": 3, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in first["items"] + second["items"]] == list(reversed(ids))
    assert second["next_cursor"] is None
    assert [j["id"] for j in client.get("/jobs", params={"kind": "fail"}).json()["items"]] == [failing]
    assert client.get("/jobs", params={"status": "queued"}).json()["items"][0]["id"] == failing
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/jobs", params={"cursor": "garbage"}).status_code == 422


def test_openapi_lists_every_status_code_each_route_answers(client):
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        ("/jobs", "post"): {"200", "202", "401", "409", "413", "422", "503"},
        ("/jobs", "get"): {"200", "401", "422", "503"},
        ("/jobs/{job_id}", "get"): {"200", "401", "404", "422", "503"},
        ("/jobs/{job_id}/replay", "post"): {"202", "401", "404", "409", "413", "422", "503"},
        ("/healthz", "get"): {"200", "503"},
    }
    for (path, method), codes in expected.items():
        assert set(paths[path][method]["responses"]) == codes, (path, method)


@pytest.fixture
def token_client(settings, database):
    with TestClient(create_app(settings.model_copy(update={"api_token": SecretStr("s3cret-token")}))) as client:
        yield client


def test_token_is_required_when_set(token_client):
    assert token_client.post("/jobs", json={"kind": "noop"}).status_code == 401
    wrong = {"Authorization": "Bearer s3cret-tokeX"}
    assert token_client.get("/jobs", headers=wrong).status_code == 401
    assert token_client.get("/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 401
    right = {"Authorization": "Bearer s3cret-token"}
    assert token_client.get("/jobs", headers=right).status_code == 200
    assert token_client.get("/healthz").status_code == 200  # health stays open
    assert token_client.get("/jobs").headers["www-authenticate"] == "Bearer"


def test_token_is_compared_in_constant_time():
    import inspect

    from api import deps

    # A timing test would be flaky; check the comparison is hmac's constant-time one.
    assert "secrets.compare_digest" in inspect.getsource(deps.token_matches)
    assert "token_matches" in inspect.getsource(deps.require_token)


@pytest.mark.brokers
def test_healthz_is_ok_when_database_and_broker_answer(client):
    assert client.get("/healthz").json() == {"database": "ok", "broker": "ok"}


@pytest.mark.parametrize(
    "dead_url", ["redis://127.0.0.1:1/0", "amqp://guest:guest@127.0.0.1:1/", "postgresql://postgres@127.0.0.1:1/jobs"]
)
def test_healthz_is_503_when_the_broker_is_unreachable(settings: Settings, database, dead_url):
    dead = settings.model_copy(update={"broker_url": dead_url})
    with TestClient(create_app(dead)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert "broker unreachable" in response.json()["detail"]
    assert "database" not in response.json()["detail"]


def test_text_the_database_cannot_store_is_a_422_not_a_500(client, queued_messages):
    response = client.post("/jobs", json={"kind": "fail", "args": {"message": "nul \u0000 inside"}})
    assert response.status_code == 422, response.text
    listing = client.get("/jobs", params={"kind": "no\u0000pe"})
    assert listing.status_code in (200, 422)  # SQLite stores NUL; PostgreSQL refuses it: never a 500
    assert queued_messages() == 0


def test_a_failure_message_with_nul_is_recorded_escaped(database, make_job, fetch):
    from jobs import db, store

    job_id = make_job("noop")
    with database.engine.connect() as conn:
        job = store.claim_job(conn, job_id, worker_id="w", lease_seconds=30)
    with db.session_scope(database.sessions) as session:
        store.record_failure(session, job, RuntimeError("bad \x00 byte"), backoff_seconds=0)
    assert fetch(job_id)[0].error_message == "bad \\x00 byte"


def test_healthz_is_503_when_no_database_connection_is_free(client, monkeypatch):
    from sqlalchemy import exc as sa_exc

    def no_connection():  # a pool timeout: a SQLAlchemyError that wraps no driver error (no .orig)
        raise sa_exc.TimeoutError("QueuePool limit reached")

    monkeypatch.setattr(client.app.state.database.engine, "connect", no_connection)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["detail"] == "database unreachable: TimeoutError"
