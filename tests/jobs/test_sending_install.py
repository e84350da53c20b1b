"""Every sessionmaker given to ``sending.install`` sends after its commits, once, whatever sessionmakers
came and went before it in the process (a test run makes one per test)."""

from __future__ import annotations

import uuid

from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from jobs import sending


def _commit_one(sessions: sessionmaker) -> None:
    with sessions() as session, session.begin():
        sending.send_after_commit(session, sending.JobMessage(uuid.uuid4(), "default"))


def test_a_sessionmaker_made_where_a_freed_one_was_still_sends():
    # SQLAlchemy's event registry knows a sessionmaker by id() until its Session class is garbage
    # collected: asked whether the hooks are there, it answered yes for a new sessionmaker that
    # CPython put at a freed one's address (most of these did, before the fix).
    engine = create_engine("sqlite://")
    silent = []
    for n in range(200):
        sent: list[sending.JobMessage] = []
        sessions = sessionmaker(engine, info={sending.SENDER_KEY: sent.extend})
        sending.install(sessions)
        _commit_one(sessions)
        if len(sent) != 1:
            silent.append(n)
        del sessions  # freed at once: the next one may be made at its address
    engine.dispose()
    assert silent == [], f"sessionmakers whose commit sent nothing: {len(silent)} of 200"


def test_installing_twice_sends_once():
    engine = create_engine("sqlite://")
    sent: list[sending.JobMessage] = []
    sessions = sessionmaker(engine, info={sending.SENDER_KEY: sent.extend})
    sending.install(sessions)
    sending.install(sessions)
    _commit_one(sessions)
    engine.dispose()
    assert len(sent) == 1


def test_an_async_sessionmaker_installed_twice_hooks_its_own_sessions_once():
    engine = create_async_engine("sqlite+aiosqlite://")
    sessions = async_sessionmaker(engine)
    sending.install(sessions)
    own = sessions.kw["sync_session_class"]
    sending.install(sessions)
    assert sessions.kw["sync_session_class"] is own  # not wrapped again
    other = async_sessionmaker(engine)
    sending.install(other)
    assert other.kw["sync_session_class"] is not own  # each async sessionmaker has its own class
