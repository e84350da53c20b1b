"""Idempotency keys: a client that retries a request (after a timeout, a 503, a reset connection)
with the same ``Idempotency-Key`` gets the first answer again, not a second job.

A key's row (``idempotency_keys``) is written in the transaction of the job it answers for, so a
crash leaves neither a key without its job nor a job made under a key without the key; it goes
when its job is deleted (foreign key, ON DELETE CASCADE). Two requests racing with one key make one
job: the key is the table's primary key, so the second insert fails (PostgreSQL makes it wait for
the first transaction's commit; SQLite's writers take turns anyway), that request's transaction is
rolled back, and it answers with the first one's row. This holds across API processes: the
database is the only thing they share.

An expired key is free again: it is deleted when it is next used, and in bulk by
:func:`delete_expired` (``jobctl prune``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from jobs import errors, models
from jobs.store.base import utcnow

_keys = models.IdempotencyKey.__table__

#: The longest key taken (the column's width).
MAX_KEY_LENGTH = 255
#: How often a request whose key another request took meanwhile looks again for that request's
#: answer (the first look finds it, unless that key expired or its job was deleted in between).
_TRIES = 3


class IdempotencyKeyReused(errors.Invalid):
    """That idempotency key was first used for a different request; a new request needs a new key."""


class IdempotencyKeyContended(errors.Conflict):
    """Other requests with that idempotency key kept changing it; try again."""


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """What a request with a key was answered: the job, and its status then."""

    job_id: uuid.UUID
    status: str
    #: The job already existed (a unique job's unfinished namesake), so nothing was created.
    duplicate: bool = False


def request_hash(operation: str, request: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``operation`` and ``request`` as canonical JSON: two requests hash the same
    when they are equal, whatever the order of their fields."""
    canonical = json.dumps([operation, request], sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def answer_once(
    session: Session, key: str, request_hash: str, *, ttl_seconds: float, act: Callable[[], Answer]
) -> Answer:
    """Answer the request ``request_hash`` made with ``key``: the first time, by running ``act``
    (which makes or changes a job in ``session`` and says what to answer) and storing its answer in
    the same transaction (the caller commits); afterwards, until ``ttl_seconds`` have passed, with
    that stored answer, without running ``act``.

    ``session`` is rolled back when another request took the key meanwhile: that request's answer
    is the answer, and this one's work is dropped. An error of ``act`` is raised as is, unless it
    came from losing such a race (a replay finding the job already replayed under the same key).

    Raises:
        IdempotencyKeyReused: ``key`` was first used for another request.
        IdempotencyKeyContended: the key kept changing under this request (expiring, its job deleted).
    """
    for _ in range(_TRIES):
        stored = _stored_answer(session, key, request_hash)
        if stored is not None:
            return stored
        try:
            answer = act()
        except errors.JobError:
            session.rollback()
            stored = _stored_answer(session, key, request_hash)
            if stored is None:
                raise
            return stored
        now = utcnow()
        try:
            session.execute(
                insert(_keys).values(
                    key=key,
                    request_hash=request_hash,
                    job_id=answer.job_id,
                    job_status=answer.status,
                    duplicate=answer.duplicate,
                    created_at=now,
                    expires_at=now + dt.timedelta(seconds=ttl_seconds),
                )
            )
        except sa_exc.IntegrityError:
            session.rollback()  # another request stored the key first: look again for its answer
            continue
        return answer
    raise IdempotencyKeyContended()


def _stored_answer(session: Session, key: str, request_hash: str) -> Answer | None:
    row = session.execute(
        select(_keys.c.request_hash, _keys.c.job_id, _keys.c.job_status, _keys.c.duplicate, _keys.c.expires_at).where(
            _keys.c.key == key
        )
    ).first()
    if row is None:
        return None
    now = utcnow()
    if row.expires_at <= now:  # expired, not yet pruned: free again
        session.execute(delete(_keys).where(_keys.c.key == key, _keys.c.expires_at <= now))
        return None
    if row.request_hash != request_hash:
        raise IdempotencyKeyReused()
    return Answer(job_id=row.job_id, status=row.job_status, duplicate=bool(row.duplicate))


def delete_expired(session: Session, *, now: dt.datetime | None = None, batch_size: int = 1000) -> int:
    """Delete one batch of keys expired by ``now`` (default: now). Returns how many; call again
    until it returns 0."""
    now = now or utcnow()
    doomed = list(session.scalars(select(_keys.c.key).where(_keys.c.expires_at <= now).limit(batch_size)))
    if doomed:
        session.execute(delete(_keys).where(_keys.c.key.in_(doomed), _keys.c.expires_at <= now))
    return len(doomed)
