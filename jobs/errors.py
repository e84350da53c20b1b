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


class JobKindNotPublic(JobError):
    """That job kind is internal: only the runner creates it."""


class InvalidCursor(JobError):
    """The pagination cursor is not one this API handed out."""
