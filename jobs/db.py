"""Engines and session factories, built by functions so each process (and each test) makes its own."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from jobs import sending
from jobs.registry import REGISTRY_KEY, Registry

_Row = TypeVar("_Row")

#: Execution option marking read-only work (SQLite then begins deferred, so it never waits for a
#: writer; PostgreSQL ignores it).
READ_ONLY_OPTION = "jobrunner_read_only"
#: How long a SQLite writer waits for the lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL, choosing psycopg 3 for a bare ``postgresql://``."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(
    url: str | URL,
    *,
    pool_size: int = 5,
    application_name: str = "jobrunner",
    ping_after_idle_seconds: float | None = None,
) -> Engine:
    """Build an engine for PostgreSQL (psycopg 3) or SQLite (set up for concurrent threads).

    A PostgreSQL connection is tested with a round trip when it leaves the pool, so that one that
    died while pooled (a server restart) is replaced before use. ``ping_after_idle_seconds``: only
    one that sat in the pool longer than that is tested (:func:`_ping_when_idle`); the worker sets
    it, for a connection that comes back within milliseconds, as on its per-job path, was alive
    then, and the claim replaces the rare one that died meanwhile (:mod:`worker.middleware`).
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _make_sqlite_engine(parsed, pool_size=pool_size)
    engine = create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=ping_after_idle_seconds is None,
        connect_args=_postgres_connect_args(parsed, application_name),
    )
    if ping_after_idle_seconds is not None:
        _ping_when_idle(engine, ping_after_idle_seconds)
    return engine


#: libpq parameters each PostgreSQL connection gets unless its URL sets them (``?connect_timeout=3``):
#: a connection attempt gives up after 10 s (to a stopped or cut-off server it would otherwise wait
#: for TCP's own timeout, minutes), and TCP keepalives find a connection to a vanished server dead
#: within about a minute of silence.
POSTGRES_CONNECT_DEFAULTS: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def _postgres_connect_args(url: URL, application_name: str) -> dict[str, Any]:
    defaults = {name: value for name, value in POSTGRES_CONNECT_DEFAULTS.items() if name not in url.query}
    return {"application_name": application_name, **defaults}


#: Where a pooled connection's record keeps when it was last given back.
_RETURNED_AT = "jobrunner_returned_at"


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Test a connection at checkout only when it sat in the pool more than ``idle_seconds``: the
    pool's documented way of refusing a connection (a checkout hook raising DisconnectionError,
    after which the pool tries another), with the dialect's own ping."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None or time.monotonic() - returned_at <= idle_seconds:
            return  # new, or back in the pool only a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except psycopg.Error as exc:
            raise sa_exc.DisconnectionError(str(exc)) from exc
        if not alive:
            raise sa_exc.DisconnectionError("the connection did not answer a ping")


def _make_sqlite_engine(url: URL, *, pool_size: int) -> Engine:
    if url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)  # the default lives under ./var
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    _prepare_sqlite(engine)
    return engine


def _prepare_sqlite(engine: Engine) -> None:
    """The connection set-up of every SQLite engine, sync (pysqlite) or async (aiosqlite)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy's pysqlite recipe: stop the driver from issuing its own BEGIN, so that
        # transactions (and SAVEPOINTs) are ours; then WAL lets readers run beside one writer.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that reads, then writes,
        # fails with "database is locked" instead of waiting when another thread wrote in between.
        # Readers (Database.readers) begin deferred: with WAL they never wait for a writer.
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN DEFERRED")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_async_engine(url: str | URL, *, pool_size: int = 5, application_name: str = "jobrunner") -> AsyncEngine:
    """An asyncio engine for the same database: psycopg 3's async mode on PostgreSQL, aiosqlite on
    SQLite (set up as :func:`make_engine` sets up its sync engine)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            parsed.set(drivername="sqlite+aiosqlite"),
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _prepare_sqlite(engine.sync_engine)
        return engine
    # postgresql+psycopg under create_async_engine is psycopg's async dialect.
    return create_async_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=_postgres_connect_args(parsed, application_name),
    )


@dataclasses.dataclass
class Database:
    """One process's engine and session factory."""

    engine: Engine
    sessions: sessionmaker[Session]

    @functools.cached_property
    def readers(self) -> sessionmaker[Session]:
        """Sessions for reading only: on SQLite they do not queue behind a long write. They know the
        job kinds, as ``sessions`` do (``registry.of(session)``), and send nothing."""
        info = {REGISTRY_KEY: self.sessions.kw.get("info", {}).get(REGISTRY_KEY)}
        return sessionmaker(
            self.engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False, info=info
        )

    @property
    def is_sqlite(self) -> bool:
        """Whether this is a SQLite database."""
        return self.engine.dialect.name == "sqlite"

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def make_database(
    url: str | URL,
    *,
    pool_size: int = 5,
    sender: sending.Sender | None = None,
    registry: Registry | None = None,
    application_name: str = "jobrunner",
    ping_after_idle_seconds: float | None = None,
) -> Database:
    """Build an engine and a sessionmaker whose sessions know the job kinds (``registry``, needed to
    create, fail or recover jobs) and send job IDs to ``sender`` after they commit. ``ping_after_idle_seconds``:
    see :func:`make_engine`."""
    engine = make_engine(
        url, pool_size=pool_size, application_name=application_name, ping_after_idle_seconds=ping_after_idle_seconds
    )
    info = {sending.SENDER_KEY: sender, REGISTRY_KEY: registry}
    sessions = sessionmaker(engine, expire_on_commit=False, info=info)
    sending.install(sessions)
    return Database(engine=engine, sessions=sessions)


@dataclasses.dataclass
class AsyncDatabase:
    """One process's asyncio engine and session factory (for async handlers)."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    async def dispose(self) -> None:
        """Close every pooled connection (on the event loop that opened them)."""
        await self.engine.dispose()


def make_async_database(
    url: str | URL,
    *,
    pool_size: int = 5,
    sender: sending.Sender | None = None,
    registry: Registry | None = None,
    application_name: str = "jobrunner",
) -> AsyncDatabase:
    """:func:`make_database` for asyncio: its sessions are AsyncSessions that know the job kinds
    and send job IDs after they commit."""
    engine = make_async_engine(url, pool_size=pool_size, application_name=application_name)
    info = {sending.SENDER_KEY: sender, REGISTRY_KEY: registry}
    sessions = async_sessionmaker(engine, expire_on_commit=False, info=info)
    sending.install(sessions)
    return AsyncDatabase(engine=engine, sessions=sessions)


def psycopg_connection(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under ``conn``, on PostgreSQL (:func:`normalize_url` picks psycopg 3),
    for what SQLAlchemy does not do (COPY, statements run straight on the driver's cursor)."""
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise TypeError(f"not a psycopg connection: {type(driver).__name__} (PostgreSQL through psycopg 3 only)")
    return driver


def get_or_raise(
    session: Session, model: type[_Row], key: Any, error: type[Exception], *, what: str, **options: Any
) -> _Row:
    """``session.get(model, key, **options)``, or ``error("no <what> <key>")`` when there is no such row."""
    row = session.get(model, key, **options)
    if row is None:
        raise error(f"no {what} {key}")
    return row


@contextlib.contextmanager
def session_scope(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for one unit of work: committed if the block succeeds, rolled back if not, closed."""
    with sessions() as session, session.begin():
        yield session
