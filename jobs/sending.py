"""Send job IDs to the broker only after the transaction that created them commits.

``jobs`` knows no broker: whoever builds the sessionmaker (the API, the worker, the CLI) passes a
``Sender``. A session collects the messages of the jobs created in it and hands them to the sender in
SQLAlchemy's ``after_commit`` event; a rollback drops them. A failed send is logged at WARNING with
the job IDs and counted (:func:`failed_sends`), and the job stays ``queued``: the row is the truth and
the sweeper sends it again.

A sender that is an :class:`InTransactionSender` (the PostgreSQL broker's) is given the messages
in SQLAlchemy's ``before_commit`` event instead, with the transaction's connection: its wake-up
(a ``NOTIFY``) then commits with the rows, or not at all.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

logger = logging.getLogger(__name__)

#: Key of the sender in ``Session.info``.
SENDER_KEY = "jobrunner.sender"
_PENDING_KEY = "jobrunner.pending_messages"


@dataclasses.dataclass(frozen=True, slots=True)
class JobMessage:
    """What goes to the broker for one job: its ID, its queue, an optional delay, and the key of the
    message in the broker (``message_id``; by default a fresh one). The store keeps the key of a job's
    last message on its row (``jobs.message_id``, unset for the first: the job's own ID), so the
    sweeper can ask the broker whether it still holds that message before sending another."""

    job_id: uuid.UUID
    queue: str
    delay_ms: int | None = None
    message_id: uuid.UUID | None = None


#: Sends messages to the broker; raises if it could not.
Sender = Callable[[Sequence[JobMessage]], None]
#: Asks the broker which of these messages it still holds (queued, delayed, or delivered and not yet
#: acknowledged); returns their job IDs. Raises if it could not tell.
HeldProbe = Callable[[Sequence[JobMessage]], set[uuid.UUID]]


@runtime_checkable
class InTransactionSender(Protocol):
    """A sender whose messages go out in the transaction that created the jobs, just before COMMIT."""

    def __call__(self, messages: Sequence[JobMessage]) -> None: ...

    def send_in_transaction(self, connection: Connection, messages: Sequence[JobMessage]) -> None: ...


def send_after_commit(session: Session, message: JobMessage) -> None:
    """Send ``message`` once ``session``'s transaction commits; never if it rolls back."""
    session.info.setdefault(_PENDING_KEY, []).append(message)


#: Set on each Session class the hooks were added to: its sessions (and a subclass's) send.
_INSTALLED_ATTR = "_jobrunner_sends"


def install(sessions: sessionmaker[Session] | async_sessionmaker[AsyncSession]) -> None:
    """Hook the after-commit send onto every session ``sessions`` makes (sync or async); installing
    twice is installing once.

    Whether the hooks are there is marked on the Session class they go on, not asked of SQLAlchemy
    (``event.contains``): its registry knows a sessionmaker by ``id()``, and keeps that key until the
    sessionmaker's Session class is garbage collected, after the sessionmaker itself was freed. A new
    sessionmaker made at the freed one's address would look installed, and its sessions would never
    send (the jobs would wait for the sweeper)."""
    target = _event_target(sessions)
    if getattr(target, _INSTALLED_ATTR, False):  # a base class's hooks fire for its subclasses too
        return
    event.listen(target, "before_commit", _send_in_transaction)
    event.listen(target, "after_commit", _send_pending)
    event.listen(target, "after_transaction_end", _drop_pending)
    setattr(target, _INSTALLED_ATTR, True)


def _event_target(sessions: sessionmaker[Session] | async_sessionmaker[AsyncSession]) -> type[Session]:
    """The Session class whose sessions ``sessions`` makes, and only those."""
    if not isinstance(sessions, async_sessionmaker):
        return sessions.class_  # a sessionmaker makes a Session subclass of its own
    # An AsyncSession's events fire on the sync Session under it (SQLAlchemy's asyncio docs, "Using
    # events with the asyncio extension"). async_sessionmaker does not subclass that class as
    # sessionmaker does, so it gets a subclass of its own here: the hooks stay on these sessions.
    base: type[Session] = sessions.kw.get("sync_session_class", Session)
    if getattr(base, "_jobrunner_owned", False):
        return base
    own = type(base.__name__, (base,), {"_jobrunner_owned": True})
    sessions.configure(sync_session_class=own)
    return own


def _send_in_transaction(session: Session) -> None:
    # before_commit runs for the root transaction only, before its last flush and its COMMIT; what
    # the sender runs on the connection commits (or rolls back) with the jobs' rows.
    # Most commits send nothing: look for pending messages before the (slow) protocol check.
    if not session.info.get(_PENDING_KEY):
        return
    sender = session.info.get(SENDER_KEY)
    if not isinstance(sender, InTransactionSender):
        return
    pending: list[JobMessage] = session.info.pop(_PENDING_KEY)
    sender.send_in_transaction(session.connection(), pending)


def _send_pending(session: Session) -> None:
    # after_commit runs after the root transaction's COMMIT succeeded, and also when a SAVEPOINT
    # (begin_nested) is released: then the messages wait for the root's commit.
    if session.in_nested_transaction():
        return
    pending: list[JobMessage] = session.info.pop(_PENDING_KEY, [])
    if not pending:
        return
    sender: Sender | None = session.info.get(SENDER_KEY)
    if sender is None:
        logger.warning("no broker configured: %d job(s) stay queued until the sweeper sends them", len(pending))
        return
    try:
        sender(pending)
    except Exception:
        _count_failed(len(pending))
        job_ids = ", ".join(str(message.job_id) for message in pending)
        logger.warning(
            "could not send %d job(s) to the broker; they stay queued and the sweeper sends them again: %s",
            len(pending),
            job_ids,
            exc_info=True,
            extra={"job_ids": [str(message.job_id) for message in pending], "action": "send_failed"},
        )


_failed_lock = threading.Lock()
_failed = 0


def _count_failed(messages: int) -> None:
    global _failed
    with _failed_lock:
        _failed += messages


def failed_sends() -> int:
    """How many job messages this process could not send after their commit (each is logged at
    WARNING with its job ID; the sweeper sends them again)."""
    with _failed_lock:
        return _failed


def _drop_pending(session: Session, transaction: SessionTransaction) -> None:
    # Runs after after_commit; for a rolled-back root transaction the messages must never go out.
    if transaction.parent is None:
        session.info.pop(_PENDING_KEY, None)
