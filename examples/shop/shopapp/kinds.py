"""The shop's job kinds: run by jobrunner's workers (``JOBRUNNER_JOB_MODULES=shopapp.kinds``), each
in a fresh session of its own: a sync one and an async one."""

from __future__ import annotations

import datetime as dt

import pydantic
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import jobs
from shopapp import models


class OrderArgs(pydantic.BaseModel):
    """Which order the job is about."""

    order_id: int


@jobs.job_kind("shop.send_receipt", args=OrderArgs, max_attempts=3)
def send_receipt(session: Session, job: jobs.RunningJob) -> None:
    """Mark the order's receipt sent (a real service would send the mail here)."""
    order = session.get(models.Order, job.args.order_id)
    if order is None:
        raise jobs.PermanentError(f"no order {job.args.order_id}")
    order.receipt_sent_at = dt.datetime.now(dt.UTC)


@jobs.job_kind("shop.render_invoice", args=OrderArgs, max_attempts=3, time_limit_seconds=30)
async def render_invoice(session: AsyncSession, job: jobs.RunningJob) -> None:
    """Write the order's invoice, with the worker's ``AsyncSession`` (run on its event loop)."""
    order = await session.get(models.Order, job.args.order_id)
    if order is None:
        raise jobs.PermanentError(f"no order {job.args.order_id}")
    order.invoice = f"INVOICE order {order.id}: {order.quantity} x {order.sku}"
