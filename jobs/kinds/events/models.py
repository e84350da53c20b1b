"""Tables of domain events: the outbox, the ledger of applied handlers, the shipped projections
(products, org stats) and notifications."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from jobs.models import Base, BigIntKey, JSONType, UTCDateTime


class Event(Base):
    """A domain event, stored (the outbox) in the transaction of the change that caused it."""

    __tablename__ = "events"
    # The dashboard's list, newest first (migration 0012).
    __table_args__ = (Index("ix_events_created_at_id", "created_at", "id"),)

    #: The client's idempotency key when it gave one, else a fresh UUID.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: The ``event.handle`` job of each handler: ``[{"handler": name, "job_id": "..."}]``, in the
    #: order of the first answer (a JSON list, since JSONB does not keep the keys of an object in order).
    handler_jobs: Mapped[list[dict[str, str]]] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class EventApplication(Base):
    """The ledger: one row per (event, handler) whose effect was applied, written in the same
    transaction as that effect; its primary key makes a second application impossible."""

    __tablename__ = "event_applications"

    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), primary_key=True)
    handler: Mapped[str] = mapped_column(String(200), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    applied_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Product(Base):
    """The product projection: a starting inventory, then each applied ``order_created`` event."""

    __tablename__ = "products"
    __table_args__ = (CheckConstraint("inventory >= 0", name="inventory_not_negative"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    sku: Mapped[str] = mapped_column(String(100), unique=True)
    #: What the product started with; a rebuild starts again from here.
    initial_inventory: Mapped[int] = mapped_column(Integer)
    inventory: Mapped[int] = mapped_column(Integer)
    #: Orders applied.
    sales_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class OrgStats(Base):
    """The org projection: users registered, and when the latest of them was."""

    __tablename__ = "org_stats"

    org_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_count: Mapped[int] = mapped_column(Integer)
    #: ``created_at`` of the latest applied ``user_registered`` event (a max, so arrival order does
    #: not matter and a rebuild finds the same value).
    last_user_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Notification(Base):
    """A notification recorded by an event handler (a processed file, a completed batch)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
