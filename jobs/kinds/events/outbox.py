"""Domain events: typed payloads, handlers, the transactional outbox, exactly-once application.

- An **event type** is a pydantic model registered under a name: ``@event_type("user_registered",
  public=True)``. Only public types may come from outside (``POST /events``, :func:`ingest` with
  ``public_only=True``); the others are the runner's own (``file.processed``, ...), emitted in code.
- A **handler** is ``handler(session, event)``, registered with ``@on("user_registered")``. Like a job
  handler it works with the session it is given and never commits, closes or opens one.
- :func:`emit` (one event) and :func:`ingest` (many) store events in the caller's session together
  with one ``event.handle`` job per (event, handler): both exist only if that session commits, and
  the job IDs go to the broker only then. An event given an ``id`` is stored once whatever the
  repeats; a repeat answers the first one's jobs.
- :func:`apply_handler` (the ``event.handle`` job) runs one handler for one event and writes the
  (event, handler) ledger row in the same transaction, so the effect lands at most once even if the
  job were replayed by hand; the job's fenced commit makes it land exactly once.
- A **projection** registers how to recompute it from its initial rows and the ledger;
  :func:`rebuild_projection` does that and reports how far the live rows were from it.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pydantic
from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs import db, errors, models, store
from jobs.kinds.events import errors as event_errors
from jobs.kinds.events import models as event_models

logger = logging.getLogger(__name__)

#: The internal job kind that runs one handler for one event (registered in ``jobs.kinds.events.handlers``).
HANDLE_KIND = "event.handle"
#: The most events one :func:`ingest` call (one ``POST /events``) takes.
MAX_EVENTS_PER_CALL = 1000

_events = event_models.Event.__table__
_ledger = event_models.EventApplication.__table__

PayloadT = TypeVar("PayloadT", bound=type[pydantic.BaseModel])


# --- registry ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as a handler sees it: its payload parsed into the type's model."""

    id: uuid.UUID
    type: str
    payload: Any
    created_at: Any


EventHandler = Callable[[Session, StoredEvent], None]


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler; ``name`` is its key in the ledger, so it must stay stable."""

    event_type: str
    name: str
    func: EventHandler


_types: dict[str, type[pydantic.BaseModel]] = {}
_public: set[str] = set()
_handlers: dict[str, dict[str, HandlerSpec]] = {}


def event_type(name: str, *, public: bool = False) -> Callable[[PayloadT], PayloadT]:
    """Register the decorated pydantic model as the payload of event type ``name``. A ``public``
    type may be posted by clients (``POST /events``); an internal one (the default) only emitted in
    code, by the runner itself."""

    def register(model: PayloadT) -> PayloadT:
        if _types.get(name, model) is not model:
            raise ValueError(f"event type {name!r} is already registered")
        _types[name] = model
        if public:
            _public.add(name)
        _handlers.setdefault(name, {})
        return model

    return register


def public_types() -> list[str]:
    """The event types clients may post, sorted."""
    return sorted(_public)


def internal_types() -> list[str]:
    """The event types only the runner emits, sorted."""
    return sorted(set(_types) - _public)


def on(type_name: str, *, name: str | None = None) -> Callable[[EventHandler], EventHandler]:
    """Register the decorated function as a handler of ``type_name`` (its ledger key: ``name``, by
    default the function's name; unique within the type)."""

    def register(func: EventHandler) -> EventHandler:
        if type_name not in _types:
            raise ValueError(f"register event type {type_name!r} before its handlers")
        key = name or func.__name__
        existing = _handlers[type_name].get(key)
        if existing is not None and existing.func is not func:
            raise ValueError(f"event type {type_name!r} already has a handler named {key!r}")
        _handlers[type_name][key] = HandlerSpec(type_name, key, func)
        return func

    return register


def payload_model(type_name: str) -> type[pydantic.BaseModel]:
    """The payload model of an event type.

    Raises:
        UnknownEventType: none is registered under ``type_name``.
    """
    try:
        return _types[type_name]
    except KeyError:
        raise event_errors.UnknownEventType(f"unknown event type: {type_name!r}") from None


def handlers_for(type_name: str) -> list[HandlerSpec]:
    """The handlers of an event type, in registration order."""
    return list(_handlers.get(type_name, {}).values())


def get_handler(type_name: str, name: str) -> HandlerSpec:
    """One handler of an event type.

    Raises:
        PermanentError: there is no such handler (a job naming it can never run).
    """
    try:
        return _handlers[type_name][name]
    except KeyError:
        raise errors.PermanentError(f"event type {type_name!r} has no handler {name!r}") from None


def dialect_insert(session: Session, table: Table) -> Any:
    """An INSERT for ``table`` in the session's dialect, so ``on_conflict_do_*`` is available."""
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return module.insert(table)


# --- storing events (the outbox) --------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to store: its type, its payload, and the caller's idempotency key if any."""

    type: str
    payload: Mapping[str, Any] | pydantic.BaseModel
    id: uuid.UUID | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Accepted:
    """What storing one event came to: its ID, its handler jobs, and whether it was a repeat."""

    event_id: uuid.UUID
    job_ids: list[uuid.UUID]
    duplicate: bool


def emit(
    session: Session,
    type_name: str,
    payload: Mapping[str, Any] | pydantic.BaseModel,
    *,
    event_id: uuid.UUID | None = None,
) -> Accepted:
    """Store one event and its handler jobs in ``session``: they exist only if it commits.

    Raises:
        UnknownEventType, InvalidEvent: the event does not fit a registered type; nothing is stored.
    """
    return ingest(session, [NewEvent(type_name, payload, event_id)])[0]


def ingest(session: Session, new_events: Sequence[NewEvent], *, public_only: bool = False) -> list[Accepted]:
    """Store events and one ``event.handle`` job per (event, handler) in ``session``, in bulk.

    Every event is checked first: one that does not fit (or, with ``public_only``, one of an
    internal type: events from outside) stores nothing. An ``id`` already stored (or
    repeated within ``new_events``) is not stored again and answers the first one's jobs with
    ``duplicate=True``; two transactions racing with one ``id`` store it once (the primary key, with
    ON CONFLICT DO NOTHING: on PostgreSQL the second waits for the first to commit).

    Raises:
        UnknownEventType, InvalidEvent: an event does not fit (the message names its index and field).
    """
    if len(new_events) > MAX_EVENTS_PER_CALL:
        raise event_errors.InvalidEvent(f"at most {MAX_EVENTS_PER_CALL} events at once, got {len(new_events)}")
    if public_only:
        for index, event in enumerate(new_events):
            _check_public(index, event.type)
    rows = [_event_row(index, event) for index, event in enumerate(new_events)]
    first_rows: dict[uuid.UUID, dict[str, Any]] = {}
    for row in rows:
        first_rows.setdefault(row["id"], row)
    stored = _insert_events(session, list(first_rows.values()))
    _create_handler_jobs(session, [row for event_id, row in first_rows.items() if event_id in stored])
    earlier = _handler_jobs_of(session, [event_id for event_id in first_rows if event_id not in stored])
    answers: list[Accepted] = []
    for row in rows:
        new = row["id"] in stored and first_rows[row["id"]] is row
        jobs = first_rows[row["id"]]["handler_jobs"] if row["id"] in stored else earlier[row["id"]]
        answers.append(Accepted(row["id"], [uuid.UUID(job["job_id"]) for job in jobs], duplicate=not new))
    return answers


def _check_public(index: int, type_name: str) -> None:
    if type_name in _types and type_name not in _public:
        raise event_errors.InvalidEvent(
            f"event {index}: type: {type_name!r} is internal (only the runner emits it); "
            f"internal types: {', '.join(internal_types())}; public types: {', '.join(public_types())}"
        )


def _event_row(index: int, event: NewEvent) -> dict[str, Any]:
    """Validate one event and build its row, with its handler jobs' IDs chosen now."""
    try:
        model = payload_model(event.type)
    except event_errors.UnknownEventType as exc:
        raise event_errors.InvalidEvent(f"event {index}: type: {exc}") from None
    raw = event.payload.model_dump(mode="json") if isinstance(event.payload, pydantic.BaseModel) else event.payload
    try:
        payload = model.model_validate(raw).model_dump(mode="json")
    except pydantic.ValidationError as exc:
        raise event_errors.InvalidEvent(f"event {index} ({event.type}): {_describe(exc)}") from exc
    jobs = [{"handler": spec.name, "job_id": str(uuid.uuid4())} for spec in handlers_for(event.type)]
    return {
        "id": event.id or uuid.uuid4(),
        "type": event.type,
        "payload": payload,
        "handler_jobs": jobs,
        "created_at": store.utcnow(),
    }


def _describe(exc: pydantic.ValidationError) -> str:
    return "; ".join(
        f"payload.{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else f"payload: {e['msg']}"
        for e in exc.errors()
    )


def _insert_events(session: Session, rows: list[dict[str, Any]]) -> set[uuid.UUID]:
    """Insert the rows whose ID is new; return those IDs."""
    if not rows:
        return set()
    statement = dialect_insert(session, _events).on_conflict_do_nothing(index_elements=["id"]).returning(_events.c.id)
    return set(session.scalars(statement, rows))


def _create_handler_jobs(session: Session, rows: list[dict[str, Any]]) -> None:
    args = [{"event_id": str(row["id"]), "handler": job["handler"]} for row in rows for job in row["handler_jobs"]]
    ids = [uuid.UUID(job["job_id"]) for row in rows for job in row["handler_jobs"]]
    store.create_jobs(session, HANDLE_KIND, args, job_ids=ids)


def _handler_jobs_of(session: Session, event_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, str]]]:
    if not event_ids:
        return {}
    query = select(_events.c.id, _events.c.handler_jobs).where(_events.c.id.in_(event_ids))
    return {row.id: row.handler_jobs for row in session.execute(query)}


# --- applying one handler ---------------------------------------------------------------------


def apply_handler(session: Session, event_id: uuid.UUID, handler_name: str, *, job_id: uuid.UUID) -> bool:
    """Run one handler for one event in ``session``, with its ledger row, unless already applied.

    Returns False, changing nothing, when the ledger already holds (event, handler). The ledger row
    is written first, with ON CONFLICT DO NOTHING: a concurrent transaction applying the same pair
    makes this one wait for it (PostgreSQL), then see the row.

    Raises:
        PermanentError: the event or the handler no longer exists, or its payload no longer fits.
    """
    row = session.execute(select(_events).where(_events.c.id == event_id)).first()
    if row is None:
        raise errors.PermanentError(f"no event {event_id}")
    spec = get_handler(row.type, handler_name)
    try:
        payload = payload_model(row.type).model_validate(row.payload)
    except (pydantic.ValidationError, event_errors.UnknownEventType) as exc:
        raise errors.PermanentError(f"event {event_id} no longer fits its type {row.type!r}: {exc}") from exc
    if not _record_application(session, event_id, handler_name, job_id=job_id):
        logger.info("event %s was already applied by handler %s; skipped", event_id, handler_name)
        return False
    spec.func(session, StoredEvent(row.id, row.type, payload, row.created_at))
    return True


def _record_application(session: Session, event_id: uuid.UUID, handler_name: str, *, job_id: uuid.UUID) -> bool:
    statement = (
        dialect_insert(session, _ledger)
        .values(event_id=event_id, handler=handler_name, job_id=job_id, applied_at=store.utcnow())
        .on_conflict_do_nothing(index_elements=["event_id", "handler"])
        .returning(_ledger.c.event_id)
    )
    # RETURNING, not rowcount: the row comes back only if this statement inserted it.
    return session.execute(statement).first() is not None


# --- reading ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class HandlerState:
    """One handler of an event: its job, and when its effect was applied (None: not yet)."""

    handler: str
    job: models.Job | None
    applied_at: Any


def get_event(session: Session, event_id: uuid.UUID) -> tuple[event_models.Event, list[HandlerState]]:
    """An event and the state of each of its handlers.

    Raises:
        EventNotFound: there is none.
    """
    event = db.get_or_raise(session, event_models.Event, event_id, event_errors.EventNotFound, what="event")
    job_ids = [uuid.UUID(j["job_id"]) for j in event.handler_jobs]
    jobs = {job.id: job for job in session.scalars(select(models.Job).where(models.Job.id.in_(job_ids)))}
    applied = dict(
        session.execute(select(_ledger.c.handler, _ledger.c.applied_at).where(_ledger.c.event_id == event_id)).all()
    )
    states = [
        HandlerState(j["handler"], jobs.get(uuid.UUID(j["job_id"])), applied.get(j["handler"]))
        for j in event.handler_jobs
    ]
    return event, states


def applied_events(session: Session, handler_name: str) -> Any:
    """Every event the handler ``handler_name`` applied, per the ledger: rows of (id, payload,
    created_at), streamed."""
    query = (
        select(_events.c.id, _events.c.payload, _events.c.created_at)
        .join(_ledger, _ledger.c.event_id == _events.c.id)
        .where(_ledger.c.handler == handler_name)
        .execution_options(yield_per=1000)
    )
    return session.execute(query)
