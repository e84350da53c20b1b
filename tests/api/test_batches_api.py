"""``POST /batches``, ``GET /batches/{id}``, ``POST /batches/{id}/cancel`` through the real app and worker."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from jobs import db
from jobs.kinds.batches import service as batches
from jobs.kinds.files import uploads as files

CSV = (
    b"name,email,quantity\n"
    b" Ada ,ADA@example.com,3\n"
    b"Bob,not-an-email,2\n"
    b"Cy,cy@example.com,-4\n"
    b"Di,di@example.com,\n"
    b",ed@example.com,1\n"
)


def _upload(client: TestClient, body: bytes = CSV) -> uuid.UUID:
    response = client.post("/files", files={"file": ("people.csv", body, "text/csv")})
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["file_id"])


def test_batch_over_an_uploaded_file_reports_counts_progress_and_failed_records(client, drain):
    file_id = _upload(client)
    drain()
    response = client.post("/batches", json={"operation": "validate", "file_id": str(file_id), "chunk_size": 2})
    assert response.status_code == 202, response.text
    batch_id = response.json()["batch_id"]
    drain()
    body = client.get(f"/batches/{batch_id}").json()
    assert (body["status"], body["total"], body["processed"], body["failed"]) == ("completed_with_errors", 5, 5, 3)
    assert (body["percent"], body["chunks_done"], body["chunks_total"], body["completions"]) == (100.0, 3, 3, 1)
    assert body["started_at"] and body["finished_at"] and body["records_per_second"] > 0
    assert [errors for errors in (r["errors"] for r in body["failed_sample"])] == [
        ["email: not an email address: 'not-an-email'"],
        ["quantity: not a non-negative integer: '-4'"],
        ["name: required"],
    ]


def test_batch_over_a_file_still_importing_is_409(client, database, settings):
    with files.UploadSink(settings.storage_dir, max_bytes=settings.max_upload_bytes) as sink:
        sink.write(CSV)
    with db.session_scope(database.sessions) as session:
        file, _ = files.register_upload(session, sink, name="people.csv", content_type="text/csv")
    response = client.post("/batches", json={"operation": "normalize", "file_id": str(file.id)})
    assert response.status_code == 409
    assert response.json() == {"detail": f"file {file.id} is pending; a batch needs a processed file"}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"operation": "shout", "record_ids": [1]}, "unknown operation 'shout'; known: "),
        ({"operation": "normalize", "file_id": "00000000-0000-0000-0000-000000000001"}, "no file 00000000-"),
        ({"operation": "normalize", "record_ids": [123456789]}, "1 record ID(s) match no record"),
    ],
)
def test_unknown_operation_file_or_records_are_422_with_a_clear_detail(client, body, detail):
    response = client.post("/batches", json=body)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)


@pytest.mark.parametrize(
    "body",
    [
        {"operation": "normalize", "record_ids": []},
        {"operation": "normalize", "record_ids": list(range(1, batches.MAX_RECORD_IDS + 2))},
        {"operation": "normalize"},
        {"operation": "normalize", "record_ids": [1], "file_id": "00000000-0000-0000-0000-000000000001"},
        {"operation": "normalize", "record_ids": [1], "chunk_size": 0},
        {"operation": "normalize", "record_ids": [1], "chunk_size": batches.MAX_CHUNK_SIZE + 1},
        {"operation": "normalize", "record_ids": [0]},
        {"operation": "normalize", "record_ids": [1], "extra": True},
    ],
)
def test_bad_batch_requests_are_422(client, body):
    response = client.post("/batches", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


def test_unknown_batch_is_404_to_read_and_to_cancel(client):
    missing = uuid.uuid4()
    assert client.get(f"/batches/{missing}").status_code == 404
    assert client.post(f"/batches/{missing}/cancel").json() == {"detail": f"no batch {missing}"}


def test_cancel_is_202_while_unfinished_and_409_once_finished(client, make_records):
    file_id, _ = make_records([{"name": "Ada"}, {"name": "Bob"}])
    batch_id = client.post("/batches", json={"operation": "normalize", "file_id": str(file_id)}).json()["batch_id"]
    response = client.post(f"/batches/{batch_id}/cancel")  # no worker: still planning, its plan job is dropped
    assert response.status_code == 202
    assert (response.json()["status"], response.json()["completions"]) == ("cancelled", 1)
    again = client.post(f"/batches/{batch_id}/cancel")
    assert again.status_code == 409
    assert again.json() == {"detail": f"batch {batch_id} is cancelled; only an unfinished batch can be cancelled"}
