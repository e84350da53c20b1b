"""The shop's own tables, on a declarative base of its own (jobrunner's tables are not in it)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """The shop's metadata: what its Alembic history migrates."""


class Order(Base):
    """An order; its receipt and invoice are made by background jobs."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: The client's reference: unique, so a second order with it fails at commit (and no job goes out).
    reference: Mapped[str] = mapped_column(String(100), unique=True)
    sku: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[int] = mapped_column(Integer)
    #: Set by the ``shop.send_receipt`` job (sync).
    receipt_sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: Written by the ``shop.render_invoice`` job (async).
    invoice: Mapped[str | None] = mapped_column(Text)
