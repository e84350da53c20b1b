"""The shop's engines, sessionmakers and ``get_db`` dependencies: one sync, one ``AsyncSession``.

:func:`make_sessions` hooks jobrunner into both sessionmakers (``jobs.install``): a job created in
one of their sessions is sent to the workers after that session commits, and never if it rolls back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

from fastapi import Request
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import jobs


@dataclasses.dataclass
class ShopSessions:
    """The shop's two session factories over one database."""

    sync: sessionmaker[Session]
    async_: async_sessionmaker[AsyncSession]

    async def dispose(self) -> None:
        """Close both pools."""
        bind = self.sync.kw["bind"]
        bind.dispose()
        await self.async_.kw["bind"].dispose()


def _async_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    # psycopg 3 is sync and async alike: postgresql+psycopg under create_async_engine is its async mode.
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def make_sessions(url: str, *, registry: jobs.Registry, sender: jobs.Sender | None) -> ShopSessions:
    """The shop's sessionmakers, each installed with jobrunner's kinds and sender."""
    sync_url = make_url(url)
    if sync_url.get_backend_name() == "postgresql":
        sync_url = sync_url.set(drivername="postgresql+psycopg")
    sessions = ShopSessions(
        sync=sessionmaker(create_engine(sync_url, pool_pre_ping=True)),
        async_=async_sessionmaker(create_async_engine(_async_url(url), pool_pre_ping=True), expire_on_commit=False),
    )
    jobs.install(sessions.sync, registry=registry, sender=sender)
    jobs.install(sessions.async_, registry=registry, sender=sender)
    return sessions


def get_db(request: Request) -> Iterator[Session]:
    """The request's sync session; routes commit before they answer."""
    sessions: ShopSessions = request.app.state.sessions
    with sessions.sync() as session:
        yield session


async def get_async_db(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's ``AsyncSession``; routes commit before they answer."""
    sessions: ShopSessions = request.app.state.sessions
    async with sessions.async_() as session:
        yield session
