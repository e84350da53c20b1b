"""``POST /files`` and ``GET /files/{id}`` through the real app, database, Redis and worker."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from jobs.config import Settings

BOUNDARY = "----jobrunner-test-boundary"


def _multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    """A multipart/form-data body built by hand (so headers can hold any bytes): (headers, data)."""
    body = b""
    for headers, data in parts:
        body += f"--{BOUNDARY}\r\n".encode() + headers + b"\r\n\r\n" + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def _file_part(data: bytes, filename: bytes = b"data.csv") -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\nContent-Type: text/csv', data


def _post_raw(client: TestClient, body: bytes | Iterator[bytes]):
    return client.post("/files", content=body, headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})


def _stored(settings: Settings) -> list[Path]:
    return sorted(settings.storage_dir.glob("**/*")) if settings.storage_dir.exists() else []


def test_uploaded_csv_is_stored_processed_and_shown(client, drain, settings):
    content = b"sku,qty\nA-1,3\nB-2,oops,extra\nC-3,5\n"
    response = client.post("/files", files={"file": ("stock.csv", content, "text/csv")})
    assert response.status_code == 202
    body = response.json()
    drain()
    shown = client.get(f"/files/{body['file_id']}").json()
    assert shown["job_id"] == body["job_id"]
    assert (shown["status"], shown["job_status"]) == ("processed", "succeeded")
    assert (shown["rows_total"], shown["rows_imported"], shown["rows_rejected"]) == (3, 2, 1)
    assert shown["row_errors"] == [{"row": 2, "reason": "expected 2 fields, got 3"}]
    assert (shown["name"], shown["content_type"], shown["size_bytes"]) == ("stock.csv", "text/csv", len(content))
    assert shown["sha256"] == hashlib.sha256(content).hexdigest()
    [stored] = _stored(settings)
    assert stored.read_bytes() == content


def test_upload_is_committed_before_the_202(client, queued_messages):
    response = client.post("/files", files={"file": ("a.csv", b"a\n1\n", "text/csv")})
    shown = client.get(f"/files/{response.json()['file_id']}").json()
    assert (shown["status"], shown["job_status"]) == ("pending", "queued")
    assert queued_messages() == 1


@pytest.fixture
def small_limit_client(settings: Settings, database) -> Iterator[TestClient]:
    """The app with a 1,000-byte upload limit."""
    with TestClient(create_app(settings.model_copy(update={"max_upload_bytes": 1000}))) as test_client:
        yield test_client


def test_upload_declaring_more_than_the_limit_is_refused_at_once(small_limit_client, settings, queued_messages):
    response = small_limit_client.post("/files", files={"file": ("big.csv", b"x" * 200_000, "text/csv")})
    assert response.status_code == 413
    assert "limit is 1000" in response.json()["detail"]
    assert _stored(settings) == [] and queued_messages() == 0


def test_upload_going_over_the_limit_midway_is_413_and_its_partial_file_removed(
    small_limit_client, settings, queued_messages
):
    body = _multipart([_file_part(b"a\n" + b"1\n" * 600)])

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is found while streaming
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    response = _post_raw(small_limit_client, chunks())
    assert response.status_code == 413
    assert response.json() == {"detail": "the file is larger than the limit of 1000 bytes"}
    assert _stored(settings) == [] and queued_messages() == 0


def test_upload_of_exactly_the_limit_is_taken(small_limit_client):
    response = small_limit_client.post("/files", files={"file": ("ok.csv", b"a\n" + b"1\n" * 499, "text/csv")})
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("request_kwargs", "detail"),
    [
        ({"files": {"file": ("empty.csv", b"", "text/csv")}}, "the file is empty"),
        ({"files": {"other": ("a.csv", b"a\n1\n", "text/csv")}}, "the form has no `file` field"),
        ({"data": {"note": "no file at all"}, "files": {"x": ("x", b"x")}}, "the form has no `file` field"),
        ({"json": {"file": "a,b"}}, "multipart/form-data"),
        ({"content": b"a,b\n1,2\n", "headers": {"content-type": "text/csv"}}, "multipart/form-data"),
    ],
)
def test_upload_without_a_non_empty_file_field_is_422_and_keeps_nothing(
    client, settings, queued_messages, request_kwargs, detail
):
    response = client.post("/files", **request_kwargs)
    assert response.status_code == 422
    assert detail in response.json()["detail"]
    assert _stored(settings) == [] and queued_messages() == 0


def test_truncated_or_doubled_multipart_bodies_are_422(client, settings):
    body = _multipart([_file_part(b"a\n1\n")])
    assert _post_raw(client, body[: len(body) - 30]).status_code == 422
    doubled = _multipart([_file_part(b"a\n1\n"), _file_part(b"b\n2\n")])
    assert _post_raw(client, doubled).json()["detail"] == "the form has more than one `file` field"
    assert _stored(settings) == []


@pytest.mark.parametrize(
    ("filename", "kept"),
    [
        (b"../../etc/passwd", "passwd"),
        (b"..\\..\\..\\boot.ini", "boot.ini"),
        (b"/absolute/path.csv", "path.csv"),
        (b"nul\x00inside.csv", "nulinside.csv"),
        (b"\xff\xfe odd bytes.csv", "\ufffd\ufffd odd bytes.csv"),
        ("caf\u00e9 \u202etxt.csv".encode(), "caf\u00e9 txt.csv"),
        (b"..", "upload"),
    ],
)
def test_client_filename_is_metadata_only_and_the_file_stays_in_the_storage_dir(
    client, settings, filename, kept, tmp_path
):
    response = _post_raw(client, _multipart([_file_part(b"a\n1\n", filename=filename)]))
    assert response.status_code == 202
    [stored] = _stored(settings)
    assert stored.parent == settings.storage_dir and len(stored.name) == 32
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [stored.name]
    assert client.get(f"/files/{response.json()['file_id']}").json()["name"] == kept


def test_other_form_fields_are_ignored(client, drain):
    body = _multipart([(b'Content-Disposition: form-data; name="note"', b"hello"), _file_part(b"a\n1\n")])
    response = _post_raw(client, body)
    assert response.status_code == 202
    drain()
    assert client.get(f"/files/{response.json()['file_id']}").json()["rows_imported"] == 1


def test_failed_file_shows_why_and_its_failed_job(client, drain):
    response = client.post("/files", files={"file": ("l1.csv", "prix,caf\u00e9\n".encode("latin-1"), "text/csv")})
    drain()
    shown = client.get(f"/files/{response.json()['file_id']}").json()
    assert (shown["status"], shown["job_status"]) == ("failed", "failed")
    assert "not valid UTF-8" in shown["error_message"]


def test_unknown_file_is_404_and_bad_id_422(client):
    assert client.get(f"/files/{uuid.uuid4()}").status_code == 404
    assert client.get("/files/not-a-uuid").status_code == 422


def test_files_routes_need_the_token_when_one_is_set(settings, database):
    with TestClient(create_app(settings.model_copy(update={"api_token": SecretStr("s3cret")}))) as client:
        assert client.post("/files", files={"file": ("a.csv", b"a\n1\n")}).status_code == 401
        assert client.get(f"/files/{uuid.uuid4()}").status_code == 401


def test_openapi_shows_the_multipart_body_and_every_status_code(client):
    document = client.get("/openapi.json").json()
    post = document["paths"]["/files"]["post"]
    schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file"] and schema["properties"]["file"]["format"] == "binary"
    assert set(post["responses"]) == {"202", "401", "413", "422", "503"}
    assert set(document["paths"]["/files/{file_id}"]["get"]["responses"]) == {"200", "401", "404", "422", "503"}
