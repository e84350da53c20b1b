"""Async job kinds used only by the tests (``async def handler(session: AsyncSession, job)``)."""

from __future__ import annotations

import asyncio
import uuid

import pydantic
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from jobs import models, registry
from tests.kinds import Boom, notes


class NoteArgs(pydantic.BaseModel):
    text: str = "note"
    raise_after: bool = False


@registry.job_kind("test.async_note", args=NoteArgs, max_attempts=2)
async def write_note(session: AsyncSession, job: registry.RunningJob) -> None:
    """Write a note row with the AsyncSession; optionally raise afterwards."""
    await session.execute(insert(notes).values(job_id=job.id, text=job.args.text))
    await session.flush()
    if job.args.raise_after:
        raise Boom(f"raised after writing {job.args.text!r}")


@registry.job_kind("test.async_sleep", time_limit_seconds=0.5, max_attempts=1)
async def sleep_past_limit(session: AsyncSession, job: registry.RunningJob) -> None:
    """Write, then await past the time limit: the coroutine is cancelled, the note rolled back."""
    await session.execute(insert(notes).values(job_id=job.id, text="before sleep"))
    await asyncio.sleep(30)


@registry.job_kind("test.async_stolen")
async def stolen_while_running(session: AsyncSession, job: registry.RunningJob) -> None:
    """Have "another worker" take the claim (a new token, on another connection), then write."""
    engine = session.bind
    async with engine.begin() as conn:
        await conn.execute(update(models.Job.__table__).where(models.Job.id == job.id).values(claim_token=uuid.uuid4()))
    await session.execute(insert(notes).values(job_id=job.id, text="stale"))


@registry.job_kind("test.async_checkpoint", max_attempts=1)
async def checkpoint_then_raise(session: AsyncSession, job: registry.RunningJob) -> None:
    """Checkpoint one note, then write another and raise: the first stays, the second does not."""
    await session.execute(insert(notes).values(job_id=job.id, text="kept"))
    await job.checkpoint_async()
    await session.execute(insert(notes).values(job_id=job.id, text="lost"))
    raise Boom("after checkpoint")
