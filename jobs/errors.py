"""Domain errors raised by ``jobs``; the edges (API, CLI, worker) translate them."""

from __future__ import annotations


class JobError(Exception):
    """Base of every jobrunner error; the docstring of a subclass is its default message."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class PermanentError(JobError):
    """The job cannot succeed however often it is retried."""


class JobNotFound(JobError):
    """No job has that ID."""


class JobNotReplayable(JobError):
    """Only a failed job can be replayed."""


class UnknownJobKind(JobError):
    """No job kind is registered under that name."""


class InvalidJobArgs(JobError):
    """The job's arguments do not fit its kind."""


class ClaimLost(JobError):
    """This worker no longer holds the job's claim (its lease expired and another worker took it)."""


class WorkerLost(JobError):
    """The worker running the job died (its lease expired) too often, or on its last attempt."""


class JobKindNotPublic(JobError):
    """That job kind is internal: only the runner creates it."""


class InvalidCursor(JobError):
    """The pagination cursor is not one this API handed out."""


# --- events ---


class UnknownEventType(JobError):
    """No event type is registered under that name."""


class InvalidEvent(JobError):
    """An event does not fit its type (the message names the event's index and the field)."""


class EventNotFound(JobError):
    """No event has that ID."""


class UnknownProjection(JobError):
    """No projection is registered under that name."""


class ProductNotFound(JobError):
    """No product has that ID."""


class DuplicateSku(JobError):
    """A product with that SKU already exists."""


class NotEnoughInventory(PermanentError):
    """The product has less inventory than the order asks for; retrying cannot change that."""


# --- files ---


class FileNotFound(JobError):
    """No file has that ID."""


class UploadTooLarge(JobError):
    """The upload is larger than JOBRUNNER_MAX_UPLOAD_BYTES."""


class InvalidUpload(JobError):
    """The upload is not a multipart form with one non-empty ``file`` field."""


# --- batches ---


class UnknownOperation(JobError):
    """No batch operation is registered under that name."""


class InvalidBatch(JobError):
    """The batch request does not name records it can run over (an unknown file or record IDs)."""


class FileNotProcessed(JobError):
    """The file is not processed yet: a batch needs all of its records."""


class BatchNotFound(JobError):
    """No batch has that ID."""


class BatchNotCancellable(JobError):
    """The batch has finished already."""


class RecordRejected(JobError):
    """A batch operation refused a record; ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems) or None)
        self.problems = list(problems)
