"""The shop's FastAPI app: its routes create orders and enqueue jobrunner jobs in the same transaction."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import pydantic
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import jobs
from shopapp import config, models
from shopapp.db import get_async_db, get_db, make_sessions

#: The module declaring the shop's kinds (the workers load it through JOBRUNNER_JOB_MODULES).
KIND_MODULES = ("shopapp.kinds",)

router = APIRouter()


class NewOrder(pydantic.BaseModel):
    reference: str = pydantic.Field(min_length=1, max_length=100)
    sku: str = pydantic.Field(min_length=1, max_length=100)
    quantity: int = pydantic.Field(gt=0)


class Accepted(pydantic.BaseModel):
    order_id: int
    job_id: str


class OrderOut(pydantic.BaseModel):
    id: int
    reference: str
    receipt_sent: bool
    invoice: str | None


def default_sender(settings: jobs.Settings) -> jobs.Sender:
    """Send job IDs to the Redis that jobrunner's workers consume (``JOBRUNNER_BROKER_URL``)."""
    from worker import producer

    return producer.make_sender(producer.make_broker(settings))


def create_app(*, database_url: str | None = None, sender: jobs.Sender | None = None) -> FastAPI:
    """The shop. ``sender``: where job IDs go after a commit (default: jobrunner's Redis)."""
    settings = jobs.Settings()
    registry = jobs.load_registry(settings, KIND_MODULES)
    sessions = make_sessions(
        database_url or config.database_url(),
        registry=registry,
        sender=sender if sender is not None else default_sender(settings),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await sessions.dispose()

    app = FastAPI(title="shop", lifespan=lifespan)
    app.state.sessions = sessions
    app.include_router(router)
    return app


@router.post("/orders", status_code=202)
def create_order(body: NewOrder, session: Annotated[Session, Depends(get_db)]) -> Accepted:
    """Sync route: the order and its receipt job in one transaction, committed before the 202."""
    order = models.Order(**body.model_dump())
    session.add(order)
    try:
        session.flush()  # the order's ID, for the job's args
        job_id = jobs.enqueue(session, "shop.send_receipt", {"order_id": order.id})
        session.commit()  # then the job's ID goes to the workers
    except sa_exc.IntegrityError:
        session.rollback()  # the job goes nowhere
        raise HTTPException(409, f"an order with reference {body.reference!r} exists") from None
    return Accepted(order_id=order.id, job_id=str(job_id))


@router.post("/async/orders", status_code=202)
async def create_order_async(body: NewOrder, session: Annotated[AsyncSession, Depends(get_async_db)]) -> Accepted:
    """Async route: the same with the ``AsyncSession``; the job's ID goes out after ``await commit()``."""
    order = models.Order(**body.model_dump())
    session.add(order)
    try:
        await session.flush()
        job_id = jobs.enqueue(session, "shop.render_invoice", {"order_id": order.id})
        await session.commit()
    except sa_exc.IntegrityError:
        await session.rollback()
        raise HTTPException(409, f"an order with reference {body.reference!r} exists") from None
    return Accepted(order_id=order.id, job_id=str(job_id))


@router.get("/orders/{order_id}")
async def read_order(order_id: int, session: Annotated[AsyncSession, Depends(get_async_db)]) -> OrderOut:
    """The order, with what its jobs did."""
    order = await session.get(models.Order, order_id)
    if order is None:
        raise HTTPException(404, f"no order {order_id}")
    return OrderOut(
        id=order.id,
        reference=order.reference,
        receipt_sent=order.receipt_sent_at is not None,
        invoice=order.invoice,
    )
