"""What the store modules share: the time, the hot-path statement runner, the attempt row."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, insert
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg

from jobs import models
from jobs.models import AttemptOutcome


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.timezone.utc)


#: Inserts ``job_attempts`` rows built by :func:`attempt_row` (one, or many in an executemany).
INSERT_ATTEMPT = insert(models.JobAttempt.__table__)


def attempt_row(job: Any, *, outcome: AttemptOutcome, finished_at: dt.datetime, **fields: Any) -> dict[str, Any]:
    """The ``job_attempts`` row of ``job``'s current attempt ending in ``outcome``.

    ``job`` is a ``Job`` or a row with its ``id`` and ``replay_count``, and its ``attempts``,
    ``worker_id`` and ``started_at`` unless ``fields`` gives ``number``, ``worker_id`` and
    ``started_at``; ``fields`` also sets the error columns.
    """
    row = {"job_id": job.id, "run": job.replay_count, "finished_at": finished_at, "outcome": outcome.value}
    for column, attribute in (("number", "attempts"), ("worker_id", "worker_id"), ("started_at", "started_at")):
        if column not in fields:
            row[column] = getattr(job, attribute)
    return {**row, **fields}


class HotStatement:
    """A statement on the worker's per-job path: SQLAlchemy Core, compiled once more to PostgreSQL
    text that runs straight on the psycopg cursor of the same connection.

    SQLAlchemy's per-execution work (cache lookup, parameter and result processing) is most of the
    worker's CPU per job; on PostgreSQL the driver gets the SQL and the values directly (UUIDs and
    aware datetimes need no conversion there, and psycopg prepares repeated statements itself).
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        compiled = statement.compile(dialect=postgresql_psycopg.dialect())
        self.postgres_sql = str(compiled)
        #: Values of the statement's own literals (statuses, NULLs), merged under the caller's.
        self.postgres_defaults = dict(compiled.params)

    def first(self, conn: Connection, params: dict[str, Any], *, own_transaction: bool = False) -> Any:
        """Execute with ``params`` in ``conn``'s transaction and return the first row, or None.

        ``own_transaction``: on PostgreSQL, when nothing ran in the transaction yet, run the
        statement on its own in autocommit mode (one round trip instead of BEGIN, it, COMMIT).
        """
        if conn.dialect.name != "postgresql":
            return conn.execute(self.statement, params).first()
        driver = conn.connection.driver_connection
        alone = own_transaction and driver.info.transaction_status == TransactionStatus.IDLE
        if alone:
            driver.autocommit = True
        try:
            with driver.cursor(row_factory=namedtuple_row) as cursor:
                cursor.execute(self.postgres_sql, {**self.postgres_defaults, **params})
                return cursor.fetchone() if cursor.description else None
        except psycopg.Error as exc:
            # What SQLAlchemy would have raised: callers handle one family of errors. A connection
            # that broke is dropped rather than given back to the pool.
            if isinstance(exc, psycopg.OperationalError):
                conn.invalidate()
            raise sa_exc.DBAPIError.instance(self.postgres_sql, params, exc, psycopg.Error) from exc
        finally:
            if alone and not driver.closed:
                driver.autocommit = False
