"""``Idempotency-Key`` on ``POST /jobs`` and ``POST /jobs/{id}/replay``, through the real app on the
test database (PostgreSQL, or SQLite), and through two API processes at once."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from jobs import db, errors, idempotency, models, store
from tests.acceptance.conftest import CLAIM, REPO_ROOT, cli_env, jobctl_command
from tests.worker.processes import wait_until
from worker import devmode


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def _count(database, model) -> int:
    with database.readers() as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def failed_job(database, make_job):
    """A job failed for good, as a worker leaves it."""
    job_id = make_job("fail")
    with database.engine.connect() as conn:
        job = store.claim_job(conn, job_id, **CLAIM)
    with db.session_scope(database.sessions) as session:
        store.record_failure(session, job, errors.PermanentError("failed on purpose"), backoff_seconds=0)
    return job_id


def test_a_retry_with_the_same_key_and_body_gets_the_first_job(client, database, queued_messages):
    key = _key()
    first = client.post("/jobs", json={"kind": "noop"}, headers=key)
    again = client.post("/jobs", json={"kind": "noop"}, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert _count(database, models.Job) == 1
    assert queued_messages() == 1  # the retry sends nothing


def test_the_first_answer_comes_back_even_after_the_job_moved_on(client, drain):
    key = _key()
    first = client.post("/jobs", json={"kind": "noop"}, headers=key).json()
    drain()
    assert client.get(f"/jobs/{first['job_id']}").json()["status"] == "succeeded"
    assert client.post("/jobs", json={"kind": "noop"}, headers=key).json() == first


def test_equal_bodies_match_whatever_the_order_of_their_fields(client, database):
    key = _key()
    first = client.post("/jobs", json={"kind": "fail", "args": {"fail_times": 1, "message": "m"}}, headers=key)
    again = client.post("/jobs", json={"args": {"message": "m", "fail_times": 1}, "kind": "fail"}, headers=key)
    assert again.status_code == 202 and again.json() == first.json()
    assert _count(database, models.Job) == 1


@pytest.mark.parametrize("other", [{"kind": "fail"}, {"kind": "fail", "args": {"message": "x"}}])
def test_the_same_key_with_another_body_is_422(client, database, other):
    key = _key()
    assert client.post("/jobs", json={"kind": "noop"}, headers=key).status_code == 202
    response = client.post("/jobs", json=other, headers=key)
    assert response.status_code == 422
    assert "different request" in response.json()["detail"]
    assert _count(database, models.Job) == 1


def test_without_a_key_or_with_new_keys_each_post_makes_a_job(client, database):
    client.post("/jobs", json={"kind": "noop"})
    client.post("/jobs", json={"kind": "noop"})
    client.post("/jobs", json={"kind": "noop"}, headers=_key())
    client.post("/jobs", json={"kind": "noop"}, headers=_key())
    assert _count(database, models.Job) == 4


def test_a_refused_request_does_not_use_up_its_key(client, database):
    key = _key()
    assert client.post("/jobs", json={"kind": "fail", "args": {"fail_times": -1}}, headers=key).status_code == 422
    assert client.post("/jobs", json={"kind": "noop"}, headers=key).status_code == 202
    assert _count(database, models.IdempotencyKey) == 1


@pytest.mark.parametrize("value", ["", "x" * (idempotency.MAX_KEY_LENGTH + 1), "a key with spaces"])
def test_a_malformed_key_is_422(client, database, value):
    response = client.post("/jobs", json={"kind": "noop"}, headers={"Idempotency-Key": value})
    assert response.status_code == 422
    assert _count(database, models.Job) == 0


def test_a_replay_retried_with_its_key_gets_the_first_answer_not_409(client, database, failed_job, queued_messages):
    key, sent_before = _key(), queued_messages()
    first = client.post(f"/jobs/{failed_job}/replay", json={"reason": "by hand"}, headers=key)
    again = client.post(f"/jobs/{failed_job}/replay", json={"reason": "by hand"}, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() == {"job_id": str(failed_job), "status": "queued"}
    assert queued_messages() == sent_before + 1  # one replay sent
    with database.readers() as session:
        history = store.list_attempts(session, failed_job)
    assert [a.outcome for a in history].count(models.AttemptOutcome.REPLAYED) == 1
    # without the key, or with another, a second replay is refused as before
    assert client.post(f"/jobs/{failed_job}/replay", json={"reason": "by hand"}).status_code == 409
    assert client.post(f"/jobs/{failed_job}/replay", json={"reason": "by hand"}, headers=_key()).status_code == 409


def test_a_key_is_bound_to_its_route_job_and_reason(client, failed_job):
    key = _key()
    assert client.post(f"/jobs/{failed_job}/replay", json={"reason": "one"}, headers=key).status_code == 202
    assert client.post(f"/jobs/{failed_job}/replay", json={"reason": "two"}, headers=key).status_code == 422
    assert client.post(f"/jobs/{uuid.uuid4()}/replay", json={"reason": "one"}, headers=key).status_code == 422
    assert client.post("/jobs", json={"kind": "noop"}, headers=key).status_code == 422


def test_an_expired_key_is_free_again_and_jobctl_prune_deletes_the_expired(client, database, settings):
    key, other = _key(), _key()
    first = client.post("/jobs", json={"kind": "noop"}, headers=key).json()
    client.post("/jobs", json={"kind": "noop"}, headers=other)
    live = client.post("/jobs", json={"kind": "noop"}, headers=_key()).json()
    _expire(database, key["Idempotency-Key"], other["Idempotency-Key"])
    renewed = client.post("/jobs", json={"kind": "noop"}, headers=key).json()
    assert renewed["job_id"] != first["job_id"]
    assert client.post("/jobs", json={"kind": "noop"}, headers=key).json() == renewed  # the new answer holds
    result = subprocess.run(
        jobctl_command("prune", "--json"), cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert '"expired_idempotency_keys": 1' in result.stdout  # `other`; the renewed and the live one stay
    with database.readers() as session:
        kept = set(session.scalars(select(models.IdempotencyKey.job_id)))
    assert kept == {uuid.UUID(renewed["job_id"]), uuid.UUID(live["job_id"])}


def _expire(database, *keys: str) -> None:
    with database.engine.begin() as conn:
        conn.execute(
            update(models.IdempotencyKey.__table__)
            .where(models.IdempotencyKey.key.in_(keys))
            .values(expires_at=store.utcnow() - dt.timedelta(seconds=1))
        )


def test_the_ttl_is_the_setting(client, database, settings):
    assert settings.idempotency_ttl_seconds == 86_400
    client.post("/jobs", json={"kind": "noop"}, headers=_key())
    with database.readers() as session:
        row = session.scalars(select(models.IdempotencyKey)).one()
    assert (row.expires_at - row.created_at).total_seconds() == 86_400


def test_a_pruned_job_takes_its_key_with_it(client, database):
    client.post("/jobs", json={"kind": "noop"}, headers=_key())
    assert _count(database, models.IdempotencyKey) == 1
    with database.engine.begin() as conn:
        conn.execute(models.Job.__table__.delete())
    assert _count(database, models.IdempotencyKey) == 0


def test_openapi_documents_the_header_on_both_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/jobs", "/jobs/{job_id}/replay"):
        parameters = {p["name"]: p for p in paths[path]["post"]["parameters"]}
        assert parameters["Idempotency-Key"]["in"] == "header"


# --- two API processes, one key ------------------------------------------------------------------

#: Keys raced, and requests per key (split between the two processes).
RACES = 15
REQUESTS_PER_KEY = 6


@pytest.fixture
def two_apis(settings, database, tmp_path):
    """Two ``jobctl api`` processes on the test's database and Redis."""
    processes, urls = [], []
    try:
        for n in range(2):
            port = devmode.free_port()
            log = open(tmp_path / f"api-{n}.log", "wb")  # noqa: SIM115 (closed with the process)
            processes.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-m", "worker", "api", "--port", str(port)],
                        cwd=REPO_ROOT,
                        env=dict(os.environ),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                    log,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for url, (process, _) in zip(urls, processes, strict=True):
            wait_until(lambda url=url, p=process: _healthy(url, p, tmp_path), timeout=60, what=f"the API at {url}")
        yield urls
    finally:
        for process, log in processes:
            process.terminate()
            process.wait(timeout=30)
            log.close()


def _healthy(url: str, process: subprocess.Popen, tmp_path: Path) -> bool:
    if process.poll() is not None:
        logs = "\n".join(p.read_text() for p in tmp_path.glob("api-*.log"))
        pytest.fail(f"an API process exited:\n{logs}")
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_concurrent_requests_with_one_key_on_two_api_processes_make_one_job(two_apis, database):
    answers: list[tuple[str, int, str | None]] = []
    lock = threading.Lock()
    clients = [httpx.Client(base_url=url, timeout=60) for url in two_apis]

    def post(key: str, n: int, barrier: threading.Barrier) -> None:
        client = clients[n % 2]
        barrier.wait()
        response = client.post("/jobs", json={"kind": "noop"}, headers={"Idempotency-Key": key})
        with lock:
            answers.append((key, response.status_code, response.json().get("job_id")))

    try:
        keys = [str(uuid.uuid4()) for _ in range(RACES)]
        for key in keys:
            barrier = threading.Barrier(REQUESTS_PER_KEY)
            threads = [threading.Thread(target=post, args=(key, n, barrier)) for n in range(REQUESTS_PER_KEY)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        for client in clients:
            client.close()
    assert Counter(status for _, status, _ in answers) == {202: RACES * REQUESTS_PER_KEY}
    jobs_per_key = {key: {job_id for k, _, job_id in answers if k == key} for key in keys}
    assert all(len(job_ids) == 1 for job_ids in jobs_per_key.values()), jobs_per_key
    assert _count(database, models.Job) == RACES
    with database.readers() as session:
        stored = {row.key: row.job_id for row in session.scalars(select(models.IdempotencyKey))}
    assert {key: str(job_id) for key, job_id in stored.items()} == {k: v.pop() for k, v in jobs_per_key.items()}
