"""The database server's clock, as a SQL expression: every lease, heartbeat and sweeper comparison
is written with it, so no process's own clock (which may be minutes off on another host) matters.

``db_now()`` is the time inside the statement that uses it; ``db_now(seconds)`` that time plus
``seconds`` (a number, or a bound parameter; NULL gives NULL).

- PostgreSQL: ``statement_timestamp()`` (the start of the current statement; ``now()`` would be the
  start of the transaction, long ago in a job's own transaction), plus ``make_interval(secs => ...)``.
- SQLite: ``strftime(..., 'now')``, which SQLite keeps stable within one statement. It is the clock
  of the process running the statement, the only clock SQLite has (its file lives on one host). The
  text has the layout SQLAlchemy stores ``DateTime`` in on SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``,
  UTC, as :class:`jobs.models.UTCDateTime` writes it), so stored and computed times compare as text.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, Connection, Float, bindparam, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from jobs.models import UTCDateTime

#: strftime layout of SQLAlchemy's SQLite DATETIME: ``%f`` is ``SS.SSS``, three zeros make microseconds.
SQLITE_LAYOUT = "%Y-%m-%d %H:%M:%f000"


class db_now(FunctionElement[dt.datetime]):  # a SQL function, named like one
    """The database's current time (UTC, timezone-aware when read back), plus optional seconds."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, seconds: Any = None) -> None:
        if seconds is None:
            super().__init__()
        else:
            offset = seconds if isinstance(seconds, ColumnElement) else literal(float(seconds), Float())
            super().__init__(offset)


def seconds_param(name: str) -> Any:
    """A bound parameter holding a number of seconds (a float, or None for NULL)."""
    return bindparam(name, type_=Float())


@compiles(db_now, "postgresql")
def _postgresql(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    arguments = list(element.clauses)
    if not arguments:
        return "statement_timestamp()"
    offset = compiler.process(arguments[0], **kw)
    return f"(statement_timestamp() + make_interval(secs => CAST({offset} AS DOUBLE PRECISION)))"


@compiles(db_now, "sqlite")
def _sqlite(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    arguments = list(element.clauses)
    if not arguments:
        return f"strftime('{SQLITE_LAYOUT}', 'now')"
    offset = compiler.process(arguments[0], **kw)
    # printf('%+f') never writes the exponent form a modifier would not parse; NULL gives NULL.
    return (
        f"(CASE WHEN {offset} IS NULL THEN NULL "
        f"ELSE strftime('{SQLITE_LAYOUT}', 'now', printf('%+.6f seconds', {offset})) END)"
    )


def database_time(conn: Connection) -> dt.datetime:
    """The database's current time, read in one statement on ``conn``."""
    return conn.execute(select(db_now())).scalar_one()
