"""Your service's sessions, made able to create jobs: :func:`install` and :func:`enqueue`.

A service keeps its own engine, sessionmaker and ``get_db`` dependency. :func:`install` tells its
sessionmaker (sync ``sessionmaker`` or ``async_sessionmaker``) which job kinds exist and where job
IDs go; from then on a route creates a job with :func:`enqueue` in the same transaction as its own
rows, and the job's ID goes to the broker only after that transaction commits, never on a rollback.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from jobs import sending, store
from jobs.registry import REGISTRY_KEY, Registry


def install(
    sessions: sessionmaker[Session] | async_sessionmaker[AsyncSession],
    *,
    registry: Registry,
    sender: sending.Sender | None,
) -> None:
    """Make every session ``sessions`` makes able to create jobs of ``registry``'s kinds, and send
    each job's ID with ``sender`` once the session's transaction commits (dropped on a rollback).

    ``sender``: ``worker.producer.make_sender(worker.producer.make_broker(settings))`` in a service,
    ``worker.testing.InProcessJobs.sender`` in its tests; None leaves the jobs to the sweeper.
    Installing twice replaces the registry and sender and hooks the commit once.
    """
    info = {**sessions.kw.get("info", {}), sending.SENDER_KEY: sender, REGISTRY_KEY: registry}
    sessions.configure(info=info)
    sending.install(sessions)


def enqueue(
    session: Session | AsyncSession,
    kind: str,
    args: dict[str, Any] | None = None,
    *,
    max_attempts: int | None = None,
) -> uuid.UUID:
    """Create a ``queued`` job of ``kind`` in ``session`` and return its ID; the ID goes to the
    broker once ``session`` commits (``await session.commit()`` for an ``AsyncSession``).

    Needs no ``await``: it only adds the row to the session (written at the next flush or commit).

    Raises:
        UnknownJobKind, InvalidJobArgs: ``kind`` is not registered, or ``args`` do not fit it.
        RuntimeError: ``session``'s sessionmaker was not installed (:func:`install`).
    """
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    return store.create_job(sync_session, kind, args, max_attempts=max_attempts).id
