"""Unique jobs: ``unique_key`` on ``POST /jobs`` and ``store.create_job``; one unfinished job per
(kind, key), decided by a partial unique index, also under concurrent posts to two API processes."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from jobs import db, models, store
from tests.api.test_idempotency import two_apis  # noqa: F401  (a fixture)

#: Concurrent posts with one key.
RACERS = 20


def _jobs_with_key(database, key: str) -> int:
    with database.readers() as session:
        return session.scalar(select(func.count()).select_from(models.Job).where(models.Job.unique_key == key))


def test_a_second_post_with_the_key_answers_the_unfinished_job(client, database, queued_messages):
    body = {"kind": "noop", "unique_key": "report-42"}
    first = client.post("/jobs", json=body)
    again = client.post("/jobs", json=body)
    assert first.status_code == 202 and first.json()["duplicate"] is False
    assert again.status_code == 200
    assert again.json() == {"job_id": first.json()["job_id"], "status": "queued", "duplicate": True}
    assert _jobs_with_key(database, "report-42") == 1
    assert queued_messages() == 1  # the duplicate sends nothing
    other_kind = client.post("/jobs", json={**body, "kind": "fail"})
    assert other_kind.status_code == 202  # the key is per kind


def test_once_the_job_finished_the_key_makes_a_new_job(client, drain):
    body = {"kind": "noop", "unique_key": "nightly"}
    first = client.post("/jobs", json=body).json()
    drain()
    assert client.get(f"/jobs/{first['job_id']}").json()["status"] == "succeeded"
    second = client.post("/jobs", json=body)
    assert second.status_code == 202 and second.json()["job_id"] != first["job_id"]


def test_a_scheduled_job_holds_its_key_too(client, database):
    first = client.post("/jobs", json={"kind": "noop", "unique_key": "later", "delay_seconds": 3600}).json()
    again = client.post("/jobs", json={"kind": "noop", "unique_key": "later"})
    assert again.status_code == 200 and again.json()["job_id"] == first["job_id"]
    assert again.json()["status"] == "scheduled"


def test_the_python_api_returns_the_existing_job(database):
    with db.session_scope(database.sessions) as session:
        first = store.create_job(session, "noop", unique_key="k").id
    with db.session_scope(database.sessions) as session:
        job, duplicate = store.create_or_find_job(session, "noop", unique_key="k")
        assert (job.id, duplicate) == (first, True)
        assert store.create_job(session, "noop", unique_key="k").id == first


def test_an_idempotency_key_retry_gets_the_duplicate_answer_again(client, database):
    body = {"kind": "noop", "unique_key": "shared"}
    client.post("/jobs", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    key = {"Idempotency-Key": str(uuid.uuid4())}
    duplicate = client.post("/jobs", json=body, headers=key)
    retried = client.post("/jobs", json=body, headers=key)
    assert duplicate.status_code == retried.status_code == 200
    assert retried.json() == duplicate.json() and retried.json()["duplicate"] is True
    assert client.post("/jobs", json={"kind": "noop", "unique_key": "another"}, headers=key).status_code == 422
    assert _jobs_with_key(database, "shared") == 1


@pytest.mark.postgres_only
def test_concurrent_posts_with_one_unique_key_on_two_api_processes_make_one_job(two_apis, database):  # noqa: F811
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(RACERS)
    clients = [httpx.Client(base_url=url, timeout=60) for url in two_apis]

    def post(n: int) -> None:
        barrier.wait()
        response = clients[n % 2].post("/jobs", json={"kind": "noop", "unique_key": "race"})
        with lock:
            answers.append((response.status_code, response.json()["job_id"]))

    threads = [threading.Thread(target=post, args=(n,)) for n in range(RACERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for client in clients:
            client.close()
    assert Counter(status for status, _ in answers) == {202: 1, 200: RACERS - 1}
    assert len({job_id for _, job_id in answers}) == 1
    assert _jobs_with_key(database, "race") == 1
