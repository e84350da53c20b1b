"""``/files``: upload a CSV, streamed to disk as it arrives, and see how its processing went.

FastAPI's ``UploadFile`` spools the whole body before the route runs, so it could not stop an
oversized upload midway. The upload route reads ``request.stream()`` itself and feeds
python-multipart's streaming parser, whose callbacks write the ``file`` part's bytes straight to a
:class:`jobs.kinds.files.uploads.UploadSink`. Only one network chunk (tens of KiB) is in memory at a time.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.deps import SessionDep, get_database
from api.responses import errors
from jobs import db, models
from jobs.kinds.files import errors as file_errors
from jobs.kinds.files import uploads as files
from jobs.kinds.files.models import FileStatus
from jobs.models import JobStatus

router = APIRouter(prefix="/files", tags=["files"])

#: Room for the multipart framing (boundary lines, part headers, other small fields) on top of the
#: file itself when a declared Content-Length is judged against the limit.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
#: The form field that carries the file.
FILE_FIELD = b"file"

#: The request body as the OpenAPI document shows it (the route reads the raw stream itself).
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A UTF-8 CSV file with a header row.",
                        }
                    },
                }
            }
        },
    }
}


class FileAccepted(BaseModel):
    """An upload was stored and its ``file.process`` job queued."""

    file_id: uuid.UUID
    job_id: uuid.UUID


class RowError(BaseModel):
    """A row that could not be taken: its number among the data rows (1 = first after the header)."""

    row: int
    reason: str


class FileOut(BaseModel):
    """A file, how far its processing got, and its job."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    content_type: str | None
    size_bytes: int
    sha256: str
    status: FileStatus
    rows_total: int
    rows_imported: int
    rows_rejected: int
    #: The first 100 row errors.
    row_errors: list[RowError]
    error_message: str | None
    job_id: uuid.UUID | None
    #: The state of the ``file.process`` job (None once the job is pruned).
    job_status: JobStatus | None = None
    created_at: dt.datetime
    finished_at: dt.datetime | None


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=FileAccepted,
    responses=errors(401, 413, 422),
    openapi_extra=_UPLOAD_BODY,
)
async def upload_file(request: Request, database: Annotated[db.Database, Depends(get_database)]) -> FileAccepted:
    """Store an uploaded CSV (multipart field ``file``) and queue its processing.

    Too large (declared or as it streams in): 413, nothing kept. Not a multipart form with one
    non-empty ``file``: 422.
    """
    settings = request.app.state.settings
    _refuse_declared_size(request.headers.get("content-length"), settings.max_upload_bytes)
    boundary = _boundary(request.headers.get("content-type"))
    # Chunks are written synchronously: each is small, so the event loop is held only briefly.
    with files.UploadSink(settings.storage_dir, max_bytes=settings.max_upload_bytes) as sink:
        upload = _MultipartUpload(boundary, sink)
        async for chunk in request.stream():
            upload.write(chunk)
        upload.finish()
    try:
        return await run_in_threadpool(_register, database, sink, upload)
    except BaseException:
        sink.path.unlink(missing_ok=True)  # no row refers to it
        raise


@router.get("/{file_id}", response_model=FileOut, responses=errors(401, 404, 422))
def get_file(file_id: uuid.UUID, session: SessionDep) -> FileOut:
    """A file's status, size, SHA-256, row counts, first row errors, and its job's state."""
    file = files.get_file(session, file_id)
    job = session.get(models.Job, file.job_id) if file.job_id else None
    out = FileOut.model_validate(file)
    out.job_status = JobStatus(job.status) if job else None
    return out


def _register(database: db.Database, sink: files.UploadSink, upload: _MultipartUpload) -> FileAccepted:
    """Insert the file row and its job, and commit before the 202 (the job ID is sent on commit)."""
    with db.session_scope(database.sessions) as session:
        file, job = files.register_upload(session, sink, name=upload.filename, content_type=upload.content_type)
    return FileAccepted(file_id=file.id, job_id=job.id)


def _refuse_declared_size(content_length: str | None, max_bytes: int) -> None:
    try:
        declared = int(content_length) if content_length else None
    except ValueError:
        raise file_errors.InvalidUpload("the Content-Length header is not a number") from None
    if declared is not None and declared > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise file_errors.UploadTooLarge(f"the upload declares {declared} bytes; the limit is {max_bytes}")


def _boundary(content_type: str | None) -> bytes:
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise file_errors.InvalidUpload("the body must be multipart/form-data with a boundary and a `file` field")
    return options[b"boundary"]


class _MultipartUpload:
    """Feeds a multipart body, chunk by chunk, to python-multipart's streaming parser and writes the
    ``file`` part to ``sink``; other fields are ignored."""

    def __init__(self, boundary: bytes, sink: files.UploadSink) -> None:
        self.sink = sink
        self.filename: str | None = None
        self.content_type: str | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._in_file = self._got_file = self._ended = False
        self._parser = MultipartParser(boundary, self._callbacks())

    def _callbacks(self) -> Any:
        return {
            "on_part_begin": self._headers.clear,
            "on_header_field": lambda data, start, end: self._add_header_bytes("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add_header_bytes("_value", data[start:end]),
            "on_header_end": self._end_header,
            "on_headers_finished": self._begin_part,
            "on_part_data": self._part_data,
            "on_part_end": self._end_part,
            "on_end": self._end,
        }

    def write(self, chunk: bytes) -> None:
        """Parse the next chunk of the body.

        Raises:
            InvalidUpload: the body is not valid multipart, or has two ``file`` parts.
            UploadTooLarge: the file went past the limit.
        """
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise file_errors.InvalidUpload(f"the body is not valid multipart/form-data: {exc}") from exc

    def finish(self) -> None:
        """Check the body is complete and held a non-empty file.

        Raises:
            InvalidUpload: it did not.
        """
        self._parser.finalize()
        if not self._ended:
            raise file_errors.InvalidUpload("the multipart body ended before its closing boundary")
        if not self._got_file:
            raise file_errors.InvalidUpload("the form has no `file` field")
        if self.sink.size_bytes == 0:
            raise file_errors.InvalidUpload("the file is empty")

    def _add_header_bytes(self, attribute: str, data: bytes) -> None:
        setattr(self, attribute, getattr(self, attribute) + data)
        if len(self._field) + len(self._value) > MULTIPART_OVERHEAD_BYTES:
            raise file_errors.InvalidUpload("a multipart part header is too long")

    def _end_header(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _begin_part(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if options.get(b"name") != FILE_FIELD:
            return
        if self._got_file:
            raise file_errors.InvalidUpload("the form has more than one `file` field")
        self._in_file = self._got_file = True
        # parse_options_header hands header bytes back as latin-1; browsers send UTF-8 filenames.
        self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        self.content_type = self._headers.get(b"content-type", b"").decode("latin-1").strip() or None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.sink.write(memoryview(data)[start:end])

    def _end_part(self) -> None:
        self._in_file = False

    def _end(self) -> None:
        self._ended = True
