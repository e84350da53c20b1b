"""The body limit of JSON routes and authentication before any body is read: in process (the real
app) and against a real ``jobctl api`` (uvicorn), where raw sockets show the answer comes before
the body was sent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from tests.worker.processes import wait_until
from worker import devmode

LIMIT = 4096
TOKEN = "limit-token"
#: How long a raw-socket exchange may wait for an answer before it counts as none.
ANSWER_TIMEOUT_SECONDS = 20


def _note(size: int) -> bytes:
    """A ``POST /jobs`` body of exactly ``size`` bytes."""
    head = b'{"kind":"test.note","args":{"text":"'
    tail = b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.fixture
def limited_client(settings, database) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"max_body_bytes": LIMIT}))) as client:
        yield client


@pytest.fixture
def token_client(settings, database) -> Iterator[TestClient]:
    update = {"max_body_bytes": LIMIT, "api_token": SecretStr(TOKEN)}
    with TestClient(create_app(settings.model_copy(update=update))) as client:
        yield client


def test_a_body_over_the_limit_is_413_and_stores_nothing(limited_client, queued_messages):
    json_headers = {"content-type": "application/json"}
    assert limited_client.post("/jobs", content=_note(LIMIT), headers=json_headers).status_code == 202
    assert queued_messages() == 1
    declared = limited_client.post("/jobs", content=_note(LIMIT + 1), headers=json_headers)
    assert declared.status_code == 413
    assert declared.json() == {"detail": f"the request body is larger than {LIMIT} bytes (JOBRUNNER_MAX_BODY_BYTES)"}
    # No Content-Length (chunked): refused as the chunks are counted.
    streamed = limited_client.post("/jobs", content=iter([_note(LIMIT * 3)]), headers=json_headers)
    assert streamed.status_code == 413 and "JOBRUNNER_MAX_BODY_BYTES" in streamed.json()["detail"]
    for path in ("/events", "/products", "/batches", f"/jobs/{uuid.uuid4()}/replay"):
        assert limited_client.post(path, content=b" " * (LIMIT + 1), headers=json_headers).status_code == 413, path
    assert queued_messages() == 1


def test_uploads_keep_their_own_limit(limited_client):
    csv = b"name,value\n" + b"".join(b"row%d,%d\n" % (n, n) for n in range(2000))
    assert len(csv) > LIMIT
    response = limited_client.post("/files", files={"file": ("big.csv", csv, "text/csv")})
    assert response.status_code == 202, response.text


def test_without_the_token_the_answer_is_401_whatever_the_body(token_client):
    assert token_client.post("/jobs", content=_note(LIMIT * 10)).status_code == 401
    assert token_client.post("/jobs", json={"kind": "noop"}).status_code == 401
    response = token_client.get("/jobs", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing or wrong bearer token"}
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert token_client.post("/jobs", content=_note(LIMIT * 10), headers=right).status_code == 413
    assert token_client.post("/jobs", json={"kind": "noop"}, headers=right).status_code == 202
    assert token_client.get("/healthz").status_code == 200
    document = token_client.get("/openapi.json")
    assert document.status_code == 200
    assert document.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# --- against a real uvicorn --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_api(tmp_path_factory, database_url, redis_url) -> Iterator[int]:
    """``jobctl api`` in a subprocess with a small body limit and a token; yields its port."""
    port = devmode.free_port()
    env = {
        **os.environ,
        "JOBRUNNER_DATABASE_URL": database_url,
        "JOBRUNNER_BROKER_URL": redis_url,
        "JOBRUNNER_STORAGE_DIR": str(tmp_path_factory.mktemp("uploads")),
        "JOBRUNNER_JOB_MODULES": "tests.kinds",
        "JOBRUNNER_MAX_BODY_BYTES": str(LIMIT),
        "JOBRUNNER_API_TOKEN": TOKEN,
    }
    log = tmp_path_factory.mktemp("api") / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "api", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None and pytest.fail(f"the API exited: {log.read_text()}")

    try:
        wait_until(healthy, timeout=60, what="the API to answer")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answer_before_the_body_ends(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send a request's head and only ``body`` (never the rest of the body it announces), then read
    the answer: there is one only if the server answered without the whole body."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_SECONDS) as sock:
        sock.sendall(head + body)
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection without an answer"
                received += chunk
        except TimeoutError:
            pytest.fail("no answer while the rest of the body was not sent: the server waited to read it all")
        header_block, _, rest = received.partition(b"\r\n\r\n")
        lines = header_block.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return int(lines[0].split()[1]), json.loads(rest[:length])


def _head(content_length: int | None = None, token: str | None = TOKEN) -> bytes:
    lines = ["POST /jobs HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if content_length is None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {content_length}")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_declared_gigabyte_is_refused_before_its_body_is_read(live_api):
    status, body = _answer_before_the_body_ends(live_api, _head(content_length=1024**3), b'{"kind":')
    assert status == 413 and "JOBRUNNER_MAX_BODY_BYTES" in body["detail"]


def test_a_chunked_body_is_refused_once_past_the_limit_without_reading_the_rest(live_api):
    chunk = b"x" * 1024
    sent = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT // len(chunk) + 2))
    status, body = _answer_before_the_body_ends(live_api, _head(content_length=None), sent)  # no closing chunk
    assert status == 413 and "JOBRUNNER_MAX_BODY_BYTES" in body["detail"]


def test_without_the_token_the_answer_comes_before_the_body(live_api):
    status, body = _answer_before_the_body_ends(live_api, _head(content_length=LIMIT, token=None))
    assert (status, body) == (401, {"detail": "missing or wrong bearer token"})
    status, _ = _answer_before_the_body_ends(live_api, _head(content_length=LIMIT, token="wrong"))
    assert status == 401
