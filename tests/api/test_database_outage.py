"""The API while its database is unavailable: every route answers 503 ``{"detail"}`` with
``Retry-After`` (never a 500, never plain text), and the API is back to normal by itself once the
database is. On a throwaway PostgreSQL server of the test's own (never the machine's): stopped,
restarted under load, a statement timeout, a connection cut mid-request, no connection slot left."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from api.app import create_app
from jobs import models
from tests.acceptance.conftest import REPO_ROOT
from tests.worker.processes import wait_until
from worker import devmode

#: One request per route of the API, with what it needs to reach the database.
ID = str(uuid.uuid4())
ROUTES: dict[tuple[str, str], tuple[str, dict]] = {
    ("post", "/jobs"): ("/jobs", {"json": {"kind": "noop"}}),
    ("get", "/jobs"): ("/jobs", {}),
    ("get", "/jobs/{job_id}"): (f"/jobs/{ID}", {}),
    ("post", "/jobs/{job_id}/replay"): (f"/jobs/{ID}/replay", {"json": {"reason": "outage"}}),
    ("post", "/jobs/{job_id}/cancel"): (f"/jobs/{ID}/cancel", {"json": {"reason": "outage"}}),
    ("get", "/queues"): ("/queues", {}),
    ("post", "/queues/{name}/pause"): ("/queues/default/pause", {}),
    ("post", "/queues/{name}/resume"): ("/queues/default/resume", {}),
    ("post", "/files"): ("/files", {"files": {"file": ("data.csv", b"name\nx\n", "text/csv")}}),
    ("get", "/files/{file_id}"): (f"/files/{ID}", {}),
    ("post", "/batches"): ("/batches", {"json": {"operation": "validate", "record_ids": [1]}}),
    ("get", "/batches/{batch_id}"): (f"/batches/{ID}", {}),
    ("post", "/batches/{batch_id}/cancel"): (f"/batches/{ID}/cancel", {}),
    ("post", "/events"): (
        "/events",
        {"json": {"type": "user_registered", "payload": {"org_id": "o", "user_id": "u", "email": "u@example.com"}}},
    ),
    ("get", "/events/{event_id}"): (f"/events/{ID}", {}),
    ("post", "/products"): ("/products", {"json": {"sku": "outage", "inventory": 1}}),
    ("get", "/products/{product_id}"): (f"/products/{ID}", {}),
    ("get", "/orgs/{org_id}/stats"): ("/orgs/acme/stats", {}),
    ("get", "/healthz"): ("/healthz", {}),
    ("get", "/metrics"): ("/metrics", {}),
    ("get", "/schedules"): ("/schedules", {}),
    ("post", "/schedules"): ("/schedules", {"json": {"name": "outage", "kind": "noop", "every_seconds": 60}}),
    ("post", "/schedules/{name}/pause"): ("/schedules/outage/pause", {}),
    ("post", "/schedules/{name}/resume"): ("/schedules/outage/resume", {}),
    ("post", "/schedules/{name}/run"): ("/schedules/outage/run", {}),
    ("delete", "/schedules/{name}"): ("/schedules/outage", {}),
}


def _call(client: TestClient, route: tuple[str, str]) -> httpx.Response:
    path, options = ROUTES[route]
    return client.request(route[0].upper(), path, **options)


def _assert_unavailable(response: httpx.Response, route: object) -> None:
    assert response.status_code == 503, (route, response.status_code, response.text)
    assert response.headers["content-type"] == "application/json", route
    assert isinstance(response.json()["detail"], str) and response.json()["detail"], route
    assert int(response.headers["Retry-After"]) > 0, route


def _outage_client(settings, **changes) -> TestClient:
    # Server errors become 500 answers, as a real server sends them (not exceptions in the test).
    return TestClient(create_app(settings.model_copy(update=changes)), raise_server_exceptions=False)


def _warm(client: TestClient, requests: int = 8) -> None:
    """Fill the API's pool with several connections (concurrent requests)."""
    with ThreadPoolExecutor(requests) as pool:
        statuses = list(pool.map(lambda _: client.get("/jobs").status_code, range(requests)))
    assert statuses == [200] * requests


def test_openapi_lists_503_with_retry_after_on_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    operations = {(method, path): spec for path, methods in paths.items() for method, spec in methods.items()}
    assert set(operations) == set(ROUTES), "a route was added or removed: update ROUTES"
    for operation, spec in operations.items():
        unavailable = spec["responses"].get("503")
        assert unavailable is not None, operation
        assert "Retry-After" in unavailable["headers"], operation
        assert unavailable["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


@pytest.mark.postgres_only
@pytest.mark.restarts_postgres
def test_every_route_answers_503_while_the_database_is_down_and_recovers_without_a_restart(
    throwaway_postgres, settings, database
):
    with _outage_client(settings) as client:
        _warm(client)
        throwaway_postgres.halt()
        for route in ROUTES:
            _assert_unavailable(_call(client, route), route)
        assert "database unreachable" in client.get("/healthz").json()["detail"]
        throwaway_postgres.start()
        # Every pooled connection died with the server; none is handed out again: each request
        # from now on gets a working one (pool_pre_ping, and SQLAlchemy's invalidation of the pool).
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: client.post("/jobs", json={"kind": "noop"}).status_code, range(16)))
        assert statuses == [202] * 16
        for route in ROUTES:
            assert _call(client, route).status_code < 500, route
        assert client.get("/healthz").status_code == 200
        assert client.app.state.database.engine.pool.checkedout() == 0


@pytest.mark.postgres_only
@pytest.mark.restarts_postgres
def test_a_statement_timeout_is_503_and_a_connection_cut_mid_request_is_not_reused(
    throwaway_postgres, settings, database
):
    admin = create_engine(throwaway_postgres.url, isolation_level="AUTOCOMMIT")
    locker = psycopg.connect(
        host="127.0.0.1",
        port=throwaway_postgres.port,
        user="postgres",
        dbname="postgres",
        options="-c statement_timeout=0",
    )
    try:
        _set_statement_timeout(admin, "300ms")
        with _outage_client(settings) as client:
            _warm(client)
            # The jobs table locked: the API's read waits, and its statement times out (QueryCanceled).
            locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            response = client.get("/jobs")
            _assert_unavailable(response, "statement timeout")
            assert "QueryCanceled" in response.json()["detail"]
            # Now the connection serving a waiting request is cut under it (AdminShutdown).
            _set_statement_timeout(admin, "0")
            client.app.state.database.engine.dispose()  # new connections, without the timeout
            waiting: dict[str, httpx.Response] = {}
            request = threading.Thread(target=lambda: waiting.setdefault("response", client.get("/jobs")))
            request.start()
            pid = wait_until(lambda: _waiting_api_backend(admin), timeout=60, what="the API's request to wait")
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            request.join(timeout=60)
            _assert_unavailable(waiting["response"], "connection cut mid-request")
            locker.rollback()
            # The cut connection is not handed out again: every request from now on gets a working one.
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda _: client.get("/jobs").status_code, range(16)))
            assert statuses == [200] * 16
            assert client.app.state.database.engine.pool.checkedout() == 0
    finally:
        locker.close()
        admin.dispose()


def _set_statement_timeout(admin, value: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE postgres SET statement_timeout = '{value}'"))


def _connections_of(url: str, role: str) -> int:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE usename = :role"), {"role": role}))
    finally:
        admin.dispose()


def _waiting_api_backend(admin) -> int | None:
    with admin.connect() as conn:
        return conn.scalar(
            text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'jobrunner-api' "
                "AND wait_event_type = 'Lock' LIMIT 1"
            )
        )


@pytest.mark.postgres_only
@pytest.mark.restarts_postgres
def test_no_connection_slot_left_is_503_until_one_frees(throwaway_postgres, settings, database):
    # A role allowed one connection; the test holds it, so the API's connect is refused
    # (TooManyConnections), as when the server's max_connections are all taken.
    admin = create_engine(throwaway_postgres.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("CREATE ROLE jobrunner_limited LOGIN CONNECTION LIMIT 1"))
            conn.execute(text("GRANT ALL ON ALL TABLES IN SCHEMA public TO jobrunner_limited"))
            conn.execute(text("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO jobrunner_limited"))
    finally:
        admin.dispose()
    limited = make_url(throwaway_postgres.url).set(username="jobrunner_limited")
    with _outage_client(settings, database_url=limited.render_as_string(hide_password=False)) as client:
        held = psycopg.connect(
            host="127.0.0.1", port=throwaway_postgres.port, user="jobrunner_limited", dbname="postgres"
        )
        try:
            _assert_unavailable(client.post("/jobs", json={"kind": "noop"}), "too many connections")
        finally:
            held.close()
        # The server frees the slot once the closed connection's backend has exited, a moment later.
        wait_until(lambda: _connections_of(throwaway_postgres.url, "jobrunner_limited") == 0, what="the slot to free")
        assert client.post("/jobs", json={"kind": "noop"}).status_code == 202


# --- a restart under load, with a real API process ------------------------------------------------

#: Clients posting jobs at once, each retrying a 503 with its Idempotency-Key.
LOAD_CLIENTS = 4
LOAD_SECONDS_AROUND = 1.5


@pytest.mark.postgres_only
@pytest.mark.restarts_postgres
def test_a_restart_under_load_gives_503s_not_500s_and_no_job_twice(throwaway_postgres, settings, database, tmp_path):
    port = devmode.free_port()
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "worker", "api", "--port", str(port)],
            cwd=REPO_ROOT,
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(base_url, api, log_path), timeout=60, what="the API to answer")
        calls, requests = _load_during(base_url, throwaway_postgres)
    finally:
        api.terminate()
        api.wait(timeout=30)
    restart_began, restart_ended = calls.pop("restart")
    statuses = [c[2] for c in calls["all"]]
    failed = [c for c in calls["all"] if c[2] != 202]
    window = max(c[1] for c in failed) - min(c[0] for c in failed) if failed else 0.0
    with database.readers() as session:
        made = set(session.scalars(select(models.Job.id)))
    print(
        f"\n[figure] PostgreSQL restart (pg_ctl stop -m fast, then start: {restart_ended - restart_began:.2f} s) "
        f"under {LOAD_CLIENTS} clients posting jobs, each retrying a refused request with its Idempotency-Key: "
        f"{len(statuses)} requests, {statuses.count(503)} 503s and {statuses.count(500)} 500s "
        f"({len(statuses) - statuses.count(202) - statuses.count(503) - statuses.count(500)} other) "
        f"within {window:.2f} s; {len(requests)} jobs accepted, {len(made)} in the database"
    )
    assert statuses.count(500) == 0, log_path.read_text()[-5000:]
    assert set(statuses) <= {202, 503}, sorted(set(statuses), key=str)
    assert 503 in statuses, "the restart went unnoticed: no request met it"
    after = [c[2] for c in calls["all"] if c[0] > restart_ended]
    assert after and set(after) == {202}, "a request failed after the server was back"
    # Each client retried each 503 with its key until a 202: one job per key, none lost or doubled.
    assert len(set(requests.values())) == len(requests)
    assert {uuid.UUID(job_id) for job_id in requests.values()} == made


def _healthy(base_url: str, process: subprocess.Popen, log_path) -> bool:
    if process.poll() is not None:
        pytest.fail(f"the API exited:\n{log_path.read_text()}")
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _load_during(base_url: str, server) -> tuple[dict, dict[str, str]]:
    """Post jobs from LOAD_CLIENTS threads while ``server`` restarts; each call is (sent, answered,
    status), each key's job ID is kept."""
    calls: dict = {"all": []}
    requests: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            while not stop.is_set():
                key = str(uuid.uuid4())
                while True:  # retry the same request until it is accepted (a client's retry loop)
                    sent = time.monotonic()
                    try:
                        response = http.post("/jobs", json={"kind": "noop"}, headers={"Idempotency-Key": key})
                        status: int | str = response.status_code
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    with lock:
                        calls["all"].append((sent, time.monotonic(), status))
                    if status == 202:
                        with lock:
                            requests[key] = response.json()["job_id"]
                        break
                    time.sleep(0.05)

    threads = [threading.Thread(target=client_loop) for _ in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(LOAD_SECONDS_AROUND)
        began = time.monotonic()
        server.restart()
        calls["restart"] = (began, time.monotonic())
        time.sleep(LOAD_SECONDS_AROUND)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    return calls, requests
