"""Domain errors raised by ``jobs``; the edges (API, CLI, worker) translate them.

Four kinds of refusal have a base class each, which the API answers with one HTTP status:
:class:`NotFound` (404), :class:`Conflict` (409), :class:`Invalid` (422), :class:`TooLarge` (413).
A feature's errors (``jobs.kinds.*.errors``) and a user's derive from them; any other
:class:`JobError` reaching the API is a 400.
"""

from __future__ import annotations


class JobError(Exception):
    """Base of every jobrunner error; the docstring of a subclass is its default message."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class NotFound(JobError):
    """No such thing."""


class Conflict(JobError):
    """The request conflicts with the current state of what it names."""


class Invalid(JobError):
    """The request is not valid."""


class TooLarge(JobError):
    """The request is larger than allowed."""


class PermanentError(JobError):
    """The job cannot succeed however often it is retried."""


class JobNotFound(NotFound):
    """No job has that ID."""


class JobNotReplayable(Conflict):
    """Only a failed job can be replayed."""


class UnknownJobKind(Invalid):
    """No job kind is registered under that name."""


class InvalidJobArgs(Invalid):
    """The job's arguments do not fit its kind."""


class ClaimLost(JobError):
    """This worker no longer holds the job's claim (its lease expired and another worker took it)."""


class WorkerLost(JobError):
    """The worker running the job died (its lease expired) too often, or on its last attempt."""


class JobKindNotPublic(Invalid):
    """That job kind is internal: only the runner creates it."""


class InvalidCursor(Invalid):
    """The pagination cursor is not one this API handed out."""


class JobNotCancellable(Conflict):
    """The job has finished: only a queued, retrying or running job can be cancelled."""


class QueueNotFound(NotFound):
    """No job kind uses that queue, no job is in it and it is not paused."""


class JobCancelled(BaseException):
    """The job was asked to stop (a cancel) while it ran: raised at its next ``checkpoint()``, or
    in its thread by the worker. A ``BaseException``, as ``asyncio.CancelledError`` is, so a
    handler's ``except Exception`` does not swallow it; the runner rolls the job's work back and
    records the job ``cancelled``."""


class KindAtLimit(JobError):
    """The job's kind has as many jobs running as its ``max_running`` allows; the job waits."""


class UniqueKeyContended(Conflict):
    """The jobs holding that unique key kept finishing while this one was created; try again."""
