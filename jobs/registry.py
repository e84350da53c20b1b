"""Job kinds: a decorator registers a handler under a name, with its options.

A handler is ``handler(session, job)``: it does its work with the session it is given and never
commits, closes or opens one. ``job`` is a :class:`RunningJob`; a long handler may call
``job.checkpoint()`` to commit its work so far.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pydantic
from sqlalchemy.orm import Session

from jobs import errors

#: The queue a kind goes to unless it names another.
DEFAULT_QUEUE = "default"


@dataclasses.dataclass(slots=True)
class RunningJob:
    """The job a handler is running: its identity, its arguments and the current attempt."""

    id: uuid.UUID
    kind: str
    #: The kind's pydantic model of the arguments if it declares one, else the raw dict.
    args: Any
    #: This attempt's number within the current run (1 for the first).
    attempt: int
    max_attempts: int
    #: The run: 0, then one more for each replay.
    run: int
    claim_token: uuid.UUID
    queue: str = DEFAULT_QUEUE
    _checkpoint: Callable[[], None] | None = None

    def set_checkpoint(self, commit: Callable[[], None]) -> None:
        """Set what :meth:`checkpoint` calls: the runner does, before it hands the job to its handler."""
        self._checkpoint = commit

    def checkpoint(self) -> None:
        """Commit the work so far, if this worker still holds the claim, and renew the lease.

        Raises:
            ClaimLost: another worker took the job over; nothing was committed.
        """
        if self._checkpoint is None:
            raise RuntimeError("checkpoint() is only available while the runner runs the job")
        self._checkpoint()


Handler = Callable[[Session, RunningJob], None]
#: Runs in the transaction that records a job's final failure: ``on_failed(session, job, error)``.
FailureHook = Callable[[Session, RunningJob, BaseException], None]


@dataclasses.dataclass(frozen=True, slots=True)
class JobKind:
    """A registered kind of job."""

    name: str
    handler: Handler
    #: Postable through ``POST /jobs``; internal kinds are created only by the runner.
    public: bool = False
    args_model: type[pydantic.BaseModel] | None = None
    #: None: the ``JOBRUNNER_MAX_ATTEMPTS`` setting.
    max_attempts: int | None = None
    #: None: the ``JOBRUNNER_TIME_LIMIT_SECONDS`` setting.
    time_limit_seconds: float | None = None
    queue: str = DEFAULT_QUEUE
    on_failed: FailureHook | None = None

    def validate_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """Check ``args`` against the kind's model and return them as stored (JSON-ready).

        Raises:
            InvalidJobArgs: they do not fit; the message says which field and why.
        """
        try:
            stored = dict(args) if self.args_model is None else self.args_model.model_validate(args).model_dump(mode="json")
        except pydantic.ValidationError as exc:
            raise errors.InvalidJobArgs(_describe(exc)) from exc
        # PostgreSQL's JSONB cannot hold a NUL character; refuse it on every database alike.
        if "\\u0000" in json.dumps(stored):
            raise errors.InvalidJobArgs("arguments may not contain NUL (\\u0000) characters")
        return stored

    def parse_args(self, args: dict[str, Any]) -> Any:
        """The stored arguments as the handler sees them: the kind's model, or the dict."""
        if self.args_model is None:
            return args
        try:
            return self.args_model.model_validate(args)
        except pydantic.ValidationError as exc:
            raise errors.PermanentError(f"stored arguments no longer fit {self.name}: {_describe(exc)}") from exc


def _describe(exc: pydantic.ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors())


_kinds: dict[str, JobKind] = {}


def job_kind(
    name: str,
    *,
    public: bool = False,
    args: type[pydantic.BaseModel] | None = None,
    max_attempts: int | None = None,
    time_limit_seconds: float | None = None,
    queue: str = DEFAULT_QUEUE,
    on_failed: FailureHook | None = None,
) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of job kind ``name``."""

    def register(handler: Handler) -> Handler:
        if name in _kinds and _kinds[name].handler is not handler:
            raise ValueError(f"job kind {name!r} is already registered")
        _kinds[name] = JobKind(
            name=name,
            handler=handler,
            public=public,
            args_model=args,
            max_attempts=max_attempts,
            time_limit_seconds=time_limit_seconds,
            queue=queue,
            on_failed=on_failed,
        )
        return handler

    return register


def get_kind(name: str) -> JobKind:
    """The kind registered under ``name``.

    Raises:
        UnknownJobKind: none is.
    """
    try:
        return _kinds[name]
    except KeyError:
        raise errors.UnknownJobKind(f"unknown job kind: {name!r}") from None


def all_kinds() -> list[JobKind]:
    """Every registered kind, by name."""
    return [_kinds[name] for name in sorted(_kinds)]


def queues() -> set[str]:
    """The queues the registered kinds use."""
    return {kind.queue for kind in _kinds.values()} | {DEFAULT_QUEUE}


def load_kinds(extra_modules: Iterable[str] = ()) -> None:
    """Import the shipped kinds and the user's modules (``JOBRUNNER_JOB_MODULES``) so they register."""
    importlib.import_module("jobs.handlers")
    for module in extra_modules:
        importlib.import_module(module)
