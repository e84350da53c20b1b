"""Uploaded files: storing an upload as it streams in, and the ``files`` rows.

The stored file gets a name the server chooses (:func:`new_storage_key`); the client's filename is
kept, sanitized, as metadata only and never becomes part of a path.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from pathlib import Path
from types import TracebackType

from sqlalchemy.orm import Session

from jobs import db, models, store
from jobs.kinds.files import errors as file_errors
from jobs.kinds.files import models as file_models

#: Longest filename kept (in characters).
MAX_NAME_CHARS = 255
#: The name kept when nothing of the client's is left after sanitizing.
FALLBACK_NAME = "upload"
_STORAGE_KEY = re.compile(r"[0-9a-f]{32}")


def sanitize_filename(name: str | None) -> str:
    """The client's filename made safe to show: its last path component (``/`` or ``\\``), without
    control, format or unassigned characters (NUL, newlines, bidi overrides), trimmed of spaces and
    dots, at most :data:`MAX_NAME_CHARS` long; :data:`FALLBACK_NAME` if nothing is left."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[/\\]", name)[-1]
    # Category C: Cc control, Cf format, Cs surrogates (undecodable bytes), Co private, Cn unassigned.
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
    name = name.strip(" .")[:MAX_NAME_CHARS].strip(" .")
    return name or FALLBACK_NAME


def new_storage_key() -> str:
    """A fresh, unguessable name for a stored file."""
    return uuid.uuid4().hex


def stored_path(storage_dir: Path, storage_key: str) -> Path:
    """Where the file stored under ``storage_key`` lives.

    Raises:
        ValueError: the key is not one :func:`new_storage_key` makes (never a path from outside).
    """
    if not _STORAGE_KEY.fullmatch(storage_key):
        raise ValueError(f"not a storage key: {storage_key!r}")
    return storage_dir / storage_key


class UploadSink:
    """Writes an upload to a new file under ``storage_dir`` as its chunks arrive, counting its size
    and computing its SHA-256 on the way; the file is removed if the upload does not complete.

    Use as a context manager: leaving the block with an exception removes the file.
    """

    def __init__(self, storage_dir: Path, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.storage_key = new_storage_key()
        self.path = stored_path(storage_dir, self.storage_key)
        self.size_bytes = 0
        self._sha256 = hashlib.sha256()
        storage_dir.mkdir(parents=True, exist_ok=True)
        # "x": never overwrite, even if two keys collided.
        self._file = self.path.open("xb")

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``.

        Raises:
            UploadTooLarge: the upload went past ``max_bytes`` (nothing more is written).
        """
        self.size_bytes += len(data)
        if self.size_bytes > self.max_bytes:
            raise file_errors.UploadTooLarge(f"the file is larger than the limit of {self.max_bytes} bytes")
        self._sha256.update(data)
        self._file.write(data)

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of what was written."""
        return self._sha256.hexdigest()

    def close(self) -> None:
        """Flush and close the file (it stays)."""
        self._file.close()

    def discard(self) -> None:
        """Close and remove the file."""
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> UploadSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def register_upload(
    session: Session,
    sink: UploadSink,
    *,
    name: str | None,
    content_type: str | None,
    block_rows: int | None = None,
) -> tuple[file_models.File, models.Job]:
    """Insert the ``files`` row of a stored upload and its ``file.process`` job in ``session``
    (the job's ID goes to the broker once the session commits).

    ``block_rows``: the most lines per committed block (None: the kind's default).
    """
    file_id = uuid.uuid4()
    args = {"file_id": str(file_id)} | ({"block_rows": block_rows} if block_rows else {})
    job = store.create_job(session, "file.process", args)
    session.flush()  # the job row first: the file row refers to it (no relationship orders them)
    file = file_models.File(
        id=file_id,
        name=sanitize_filename(name),
        content_type=content_type[:255] if content_type else None,
        size_bytes=sink.size_bytes,
        sha256=sink.sha256,
        storage_key=sink.storage_key,
        status=file_models.FileStatus.PENDING,
        job_id=job.id,
        rows_total=0,
        rows_imported=0,
        rows_rejected=0,
        row_errors=[],
        byte_offset=0,
        created_at=store.utcnow(),
    )
    session.add(file)
    return file, job


def get_file(session: Session, file_id: uuid.UUID) -> file_models.File:
    """The file with ``file_id``.

    Raises:
        FileNotFound: there is none.
    """
    return db.get_or_raise(session, file_models.File, file_id, file_errors.FileNotFound, what="file")
