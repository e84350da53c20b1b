"""Job kinds: a decorator declares a handler under a name, with its options; a :class:`Registry`
holds the kinds one application runs.

A module may also declare checks of the database's invariants with :func:`invariant` (a feature's
own, next to the code that keeps them); a :class:`Registry` collects them with the kinds, and
``jobctl check`` runs them (see :mod:`jobs.store.checking`).

A handler is ``handler(session, job)``: it does its work with the session it is given and never
commits, closes or opens one. ``job`` is a :class:`RunningJob`; a long handler may call
``job.checkpoint()`` to commit its work so far. A handler may also be a coroutine function,
``async def handler(session: AsyncSession, job)``: the worker runs it on its event loop with an
``AsyncSession`` of its own, under the same guarantees (``await job.checkpoint_async()``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import uuid
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any, TypeVar

import pydantic
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from jobs import errors
from jobs.config import Settings
from jobs.scheduling.declared import ScheduleSpec, schedule

__all__ = ["schedule"]  # declared with the kinds: ``registry.schedule(...)`` beside ``registry.job_kind``

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
    #: The W3C ``traceparent`` of the span that created the job (None: not traced).
    trace_parent: str | None = None
    _checkpoint: Callable[[], None] | None = None
    _checkpoint_async: Callable[[], Awaitable[None]] | None = None

    def set_checkpoint(self, commit: Callable[[], None]) -> None:
        """Set what :meth:`checkpoint` calls: the runner does, before it hands the job to its handler."""
        self._checkpoint = commit

    def set_checkpoint_async(self, commit: Callable[[], Awaitable[None]]) -> None:
        """Set what :meth:`checkpoint_async` awaits (the runner does, for an async handler)."""
        self._checkpoint_async = commit

    def checkpoint(self) -> None:
        """Commit the work so far, if this worker still holds the claim, and renew the lease.

        Raises:
            ClaimLost: another worker took the job over; nothing was committed.
        """
        if self._checkpoint is None:
            raise RuntimeError("checkpoint() is only available while the runner runs the job")
        self._checkpoint()

    async def checkpoint_async(self) -> None:
        """:meth:`checkpoint` for an async handler: commit its ``AsyncSession``'s work so far, if
        this worker still holds the claim, and renew the lease.

        Raises:
            ClaimLost: another worker took the job over; nothing was committed.
        """
        if self._checkpoint_async is None:
            raise RuntimeError("checkpoint_async() is only available while the runner runs an async job")
        await self._checkpoint_async()


Handler = Callable[[Session, RunningJob], None]
#: An async kind's handler: ``async def handler(session: AsyncSession, job)``.
AsyncHandler = Callable[[AsyncSession, RunningJob], Awaitable[None]]
_AnyHandler = TypeVar("_AnyHandler", Handler, AsyncHandler)
#: Runs in the transaction that records a job's final failure: ``on_failed(session, job, error)``.
FailureHook = Callable[[Session, RunningJob, BaseException], None]
#: Runs in the transaction that records a running job stopped by a cancel: ``on_cancelled(session, job)``.
CancelHook = Callable[[Session, RunningJob], None]


@dataclasses.dataclass(frozen=True, slots=True)
class JobKind:
    """A registered kind of job."""

    name: str
    handler: Handler | AsyncHandler
    #: Postable through ``POST /jobs``; internal kinds are created only by the runner.
    public: bool = False
    args_model: type[pydantic.BaseModel] | None = None
    #: None when declared: the ``JOBRUNNER_MAX_ATTEMPTS`` setting (a :class:`Registry` fills it in).
    max_attempts: int | None = None
    #: None when declared: the ``JOBRUNNER_TIME_LIMIT_SECONDS`` setting (filled in likewise).
    time_limit_seconds: float | None = None
    queue: str = DEFAULT_QUEUE
    on_failed: FailureHook | None = None
    on_cancelled: CancelHook | None = None
    #: At most this many jobs of the kind run at once, across every worker (None: no limit).
    max_running: int | None = None

    @property
    def is_async(self) -> bool:
        """Whether the handler is a coroutine function (run on the worker's event loop)."""
        return inspect.iscoroutinefunction(self.handler)

    def validate_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """Check ``args`` against the kind's model and return them as stored (JSON-ready).

        Raises:
            InvalidJobArgs: they do not fit; the message says which field and why.
        """
        try:
            if self.args_model is None:
                stored = dict(args)
            else:
                stored = self.args_model.model_validate(args).model_dump(mode="json")
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


#: The attribute :func:`job_kind` sets on a handler: its declaration, found by :meth:`Registry.add_module`.
_DECLARATION = "__jobrunner_kind__"
#: The attribute :func:`invariant` sets on a check, found likewise.
_INVARIANT = "__jobrunner_invariant__"
#: Key of the registry in ``Session.info`` (see :func:`of`).
REGISTRY_KEY = "jobrunner.registry"


def job_kind(
    name: str,
    *,
    public: bool = False,
    args: type[pydantic.BaseModel] | None = None,
    max_attempts: int | None = None,
    time_limit_seconds: float | None = None,
    queue: str = DEFAULT_QUEUE,
    on_failed: FailureHook | None = None,
    on_cancelled: CancelHook | None = None,
    max_running: int | None = None,
) -> Callable[[_AnyHandler], _AnyHandler]:
    """Declare the decorated function the handler of job kind ``name``: ``handler(session, job)``,
    or ``async def handler(session: AsyncSession, job)`` (run on the worker's event loop).

    Declaring registers nothing: a :class:`Registry` takes the kinds declared in the modules it is
    given (:func:`jobs.kinds.load_registry` does that for the shipped kinds and
    ``JOBRUNNER_JOB_MODULES``). ``max_attempts`` and ``time_limit_seconds`` left None take the
    settings' values there. ``on_cancelled`` runs when a running job of the kind is stopped by a
    cancel, in the transaction that records it; ``max_running`` bounds how many run at once.
    """
    if max_running is not None and max_running < 1:
        raise ValueError(f"max_running of {name!r} must be at least 1")

    def declare(handler: _AnyHandler) -> _AnyHandler:
        kind = JobKind(
            name=name,
            handler=handler,
            public=public,
            args_model=args,
            max_attempts=max_attempts,
            time_limit_seconds=time_limit_seconds,
            queue=queue,
            on_failed=on_failed,
            on_cancelled=on_cancelled,
            max_running=max_running,
        )
        setattr(handler, _DECLARATION, kind)
        return handler

    return declare


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    """One breach of an invariant of the database, as a check found it."""

    #: The invariant broken (a short name, such as ``final-attempt``).
    invariant: str
    #: What breaks it: ``job <id>``, ``batch <id>``, ...
    subject: str
    #: What is wrong, in one line.
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.subject}: {self.detail}"


#: ``check(session, limit)``: up to ``limit`` violations of one invariant (set-based SQL, read only).
Check = Callable[[Session, int], list[Violation]]


def invariant(check: Check) -> Check:
    """Declare ``check`` a check of the database's invariants.

    As with :func:`job_kind`, declaring registers nothing: a :class:`Registry` takes the checks
    declared in the modules it is given, and ``jobctl check`` runs them after the core's own.
    """
    setattr(check, _INVARIANT, True)
    return check


class Registry:
    """The job kinds one application runs, their options resolved against its settings.

    Built once per process by :func:`jobs.kinds.load_registry` and handed to everything that needs
    a kind: the worker, the API, the CLI, and (through ``Session.info``, see :func:`of`) the store.
    """

    def __init__(self, settings: Settings) -> None:
        #: The application's settings, for handlers that need one (``registry.of(session).settings``).
        self.settings = settings
        self._kinds: dict[str, JobKind] = {}
        self._checks: list[Check] = []
        self._schedules: dict[str, ScheduleSpec] = {}

    def add(self, kind: JobKind) -> None:
        """Add ``kind``, its unset options taking this registry's defaults.

        Raises:
            ValueError: another handler has that name already.
        """
        existing = self._kinds.get(kind.name)
        if existing is not None:
            if existing.handler is kind.handler:
                return
            raise ValueError(f"job kind {kind.name!r} is already registered")
        self._kinds[kind.name] = dataclasses.replace(
            kind,
            max_attempts=kind.max_attempts or self.settings.max_attempts,
            time_limit_seconds=kind.time_limit_seconds or self.settings.time_limit_seconds,
        )

    def add_module(self, module: ModuleType) -> None:
        """Add every kind declared with :func:`job_kind` in ``module``, and every check declared
        with :func:`invariant`."""
        for value in list(vars(module).values()):
            kind = getattr(value, _DECLARATION, None)
            if isinstance(kind, JobKind):
                self.add(kind)
            if getattr(value, _INVARIANT, False) is True and value not in self._checks:
                self._checks.append(value)
            if isinstance(value, ScheduleSpec):
                self.add_schedule(value)

    def add_schedule(self, spec: ScheduleSpec) -> None:
        """Add a schedule declared in code (:func:`jobs.scheduling.schedule`); workers upsert these at boot.

        Raises:
            ValueError: another schedule has that name already.
        """
        existing = self._schedules.get(spec.name)
        if existing is not None and existing != spec:
            raise ValueError(f"schedule {spec.name!r} is already declared")
        self._schedules[spec.name] = spec

    def schedules(self) -> list[ScheduleSpec]:
        """The schedules declared in the modules added, by name."""
        return [self._schedules[name] for name in sorted(self._schedules)]

    def invariant_checks(self) -> list[Check]:
        """The checks declared in the modules added, in the order they were added."""
        return list(self._checks)

    def get(self, name: str) -> JobKind:
        """The kind registered under ``name``.

        Raises:
            UnknownJobKind: none is.
        """
        try:
            return self._kinds[name]
        except KeyError:
            raise errors.UnknownJobKind(f"unknown job kind: {name!r}") from None

    def find(self, name: str) -> JobKind | None:
        """The kind registered under ``name``, or None."""
        return self._kinds.get(name)

    def all(self) -> list[JobKind]:
        """Every kind, by name."""
        return [self._kinds[name] for name in sorted(self._kinds)]

    def has_async_kinds(self) -> bool:
        """Whether any kind has an async handler (the worker then runs an event loop)."""
        return any(kind.is_async for kind in self._kinds.values())

    def limited_kinds(self) -> dict[str, int]:
        """The kinds declared with ``max_running``, and their limits."""
        return {kind.name: kind.max_running for kind in self._kinds.values() if kind.max_running is not None}

    def queues(self) -> set[str]:
        """The queues the kinds use."""
        return {kind.queue for kind in self._kinds.values()} | {DEFAULT_QUEUE}


def of(session: Session) -> Registry:
    """The registry of the sessionmaker that made ``session`` (``jobs.db.make_database(registry=...)``).

    Raises:
        RuntimeError: the session was not made by such a sessionmaker.
    """
    registry: Registry | None = session.info.get(REGISTRY_KEY)
    if registry is None:
        raise RuntimeError("this session knows no job kinds: make it with jobs.db.make_database(..., registry=...)")
    return registry
