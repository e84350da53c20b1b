"""Errors of the files feature."""

from __future__ import annotations

from jobs.errors import Invalid, NotFound, TooLarge


class FileNotFound(NotFound):
    """No file has that ID."""


class UploadTooLarge(TooLarge):
    """The upload is larger than JOBRUNNER_MAX_UPLOAD_BYTES."""


class InvalidUpload(Invalid):
    """The upload is not a multipart form with one non-empty ``file`` field."""
