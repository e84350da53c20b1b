"""The operator log: one row per action an operator took on jobs from the dashboard (who, when,
what, why, how many), written in the transaction of the action itself."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from jobs.models import Base, BigIntKey, JSONType, UTCDateTime
from jobs.store.base import utcnow


class OperatorAction(Base):
    """An action an operator took (a replay, a retry now, a batch cancel...)."""

    __tablename__ = "operator_actions"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    #: Who: the name given at login (else the session's role) and the client's address.
    actor: Mapped[str] = mapped_column(String(200))
    #: The action's name (``replay``, ``retry_now``, ``cancel_batch``...).
    action: Mapped[str] = mapped_column(String(50))
    reason: Mapped[str | None] = mapped_column(Text)
    #: What it was asked to act on: ``{"job_ids": [...]}``, ``{"filter": {...}}`` or ``{"batch_id": ...}``.
    target: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: How many it selected, and how many it changed (the others had moved on meanwhile).
    selected: Mapped[int] = mapped_column(Integer)
    changed: Mapped[int] = mapped_column(Integer)


def record_action(
    session: Session,
    *,
    actor: str,
    action: str,
    reason: str | None,
    target: dict[str, Any],
    selected: int,
    changed: int,
) -> OperatorAction:
    """Add an entry to the log (flushed, not committed: it commits with the action)."""
    entry = OperatorAction(
        at=utcnow(), actor=actor, action=action, reason=reason, target=target, selected=selected, changed=changed
    )
    session.add(entry)
    session.flush()
    return entry


def recent_actions(session: Session, *, limit: int = 50) -> list[OperatorAction]:
    """The latest entries, newest first."""
    query = select(OperatorAction).order_by(OperatorAction.at.desc(), OperatorAction.id.desc()).limit(limit)
    return list(session.scalars(query))
