"""What the store modules share: the time, the hot-path statement runner, the attempt row, sending
an existing job again."""

from __future__ import annotations

import collections
import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, bindparam, insert, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.orm import Session

from jobs import db, models, sending
from jobs.models import AttemptOutcome


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


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


def fresh_message(job_id: uuid.UUID, queue: str, *, delay_ms: int | None = None) -> sending.JobMessage:
    """The message that sends an existing job again, under a new key of its own.

    Whoever sends it records that key on the job's row (``jobs.message_id``) in the transaction
    that sends it: the sweeper asks the broker about the key the row records
    (:func:`jobs.store.resend_overdue_jobs`), and Redis keeps each message under its key, so a row
    keeping an older key would have the sweeper send again a job whose message is still waiting.
    The first message of a job is keyed by the job's ID and needs no record (the column is unset).
    """
    return sending.JobMessage(job_id, queue, delay_ms=delay_ms, message_id=uuid.uuid4())


#: Records the key of a job's last message (see :func:`send_again`).
_RECORD_MESSAGE_ID = (
    update(models.Job.__table__)
    .where(models.Job.__table__.c.id == bindparam("b_job_id"))
    .values(message_id=bindparam("b_message_id"))
)


def send_again(session: Session, messages: Sequence[sending.JobMessage]) -> None:
    """Send existing jobs again once ``session`` commits, each under a fresh key
    (:func:`fresh_message`) that this transaction records on its row, in one executemany.

    For a statement that changes one job and can write the key itself (a retry, an interrupt), build
    the message with :func:`fresh_message` and write its key in that statement instead.
    """
    keyed = [fresh_message(message.job_id, message.queue, delay_ms=message.delay_ms) for message in messages]
    if not keyed:
        return
    # Rows updated in the order of their job IDs: two transactions recording keys of the same jobs
    # lock them in the same order, and one waits for the other rather than deadlock. The messages
    # go out in the caller's order (the oldest job first, say).
    session.execute(
        _RECORD_MESSAGE_ID,
        [
            {"b_job_id": message.job_id, "b_message_id": message.message_id}
            for message in sorted(keyed, key=lambda message: message.job_id)
        ],
    )
    for message in keyed:
        sending.send_after_commit(session, message)


class HotStatement:
    """A statement on the worker's per-job path (the claim, the success, the PostgreSQL broker's
    take): SQLAlchemy Core, compiled once more to PostgreSQL text that runs straight on the psycopg
    cursor of the same connection.

    Measured against running the same cached Core statement with ``conn.execute`` (the public way,
    the claim in ``conn.begin()``): the full path ran 1.18x the jobs/s (536 vs 454, medians of 9
    and 7 runs of ``tests/benchmarks/throughput.py``) with 30% less worker CPU per job, mostly from
    the claim's one round trip in autocommit mode instead of BEGIN, UPDATE, COMMIT and from skipping
    SQLAlchemy's per-execution bookkeeping. It stays, fenced: values still go through the same type
    processing SQLAlchemy applies (each bind's and each RETURNING column's ``TypeEngine`` processor,
    so a naive datetime is refused as ``conn.execute`` refuses it), errors come out as SQLAlchemy's,
    and ``tests/jobs/test_hot_statement.py`` checks it returns what ``conn.execute`` returns. Other
    databases run the statement through ``conn.execute``.
    """

    def __init__(self, statement: Any, *, postgres_statement: Any = None) -> None:
        """``postgres_statement``: what runs on PostgreSQL, when it differs from ``statement`` (which
        other databases run); it must take the same parameters and return the same columns."""
        self.statement = statement
        dialect = postgresql_psycopg.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's dialect class is unannotated
        statement = statement if postgres_statement is None else postgres_statement
        compiled = statement.compile(dialect=dialect)
        self.postgres_sql = str(compiled)
        #: SQLAlchemy's bind processors (a TypeDecorator's ``process_bind_param`` included), by name.
        self._bind_processors: dict[str, Callable[[Any], Any]] = {}
        for name in compiled.params:  # the rendered names (``binds`` also holds anonymous ones)
            processor = compiled.binds[name].type.bind_processor(dialect)
            if processor is not None:
                self._bind_processors[name] = processor
        #: Values of the statement's own literals (statuses, NULLs), merged under the caller's.
        self.postgres_defaults = self._process(dict(compiled.params))
        columns = list(statement.exported_columns)
        self._row = collections.namedtuple("HotRow", [column.key for column in columns])  # type: ignore[misc]
        self._result_processors = [column.type.result_processor(dialect, None) for column in columns]

    def _process(self, params: dict[str, Any]) -> dict[str, Any]:
        processed = dict(params)
        for name, processor in self._bind_processors.items():
            if name in processed:
                try:
                    processed[name] = processor(processed[name])
                except Exception as exc:
                    # As conn.execute reports a value its type refuses.
                    raise sa_exc.StatementError(str(exc), self.postgres_sql, params, exc) from exc
        return processed

    def first(self, conn: Connection, params: dict[str, Any], *, own_transaction: bool = False) -> Any:
        """Execute with ``params`` in ``conn``'s transaction and return the first row (its columns
        by name), or None.

        ``own_transaction``: on PostgreSQL, when nothing ran in the transaction yet, run the
        statement on its own in autocommit mode (one round trip instead of BEGIN, it, COMMIT).
        """
        if conn.dialect.name != "postgresql" or conn.dialect.is_async:
            # An async handler's connection (psycopg's AsyncConnection under SQLAlchemy's greenlet
            # adapter) has no sync cursor to run on: the public way there.
            return conn.execute(self.statement, params).first()
        rows = self._run(conn, params, own_transaction=own_transaction, first=True)
        return rows[0] if rows else None

    def all(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        """Execute with ``params`` in ``conn``'s transaction (or at once, on a connection in
        autocommit mode) and return every row."""
        if conn.dialect.name != "postgresql" or conn.dialect.is_async:
            return list(conn.execute(self.statement, params))
        return self._run(conn, params, own_transaction=False, first=False)

    def _run(self, conn: Connection, params: dict[str, Any], *, own_transaction: bool, first: bool) -> list[Any]:
        values = {**self.postgres_defaults, **self._process(params)}
        driver = db.psycopg_connection(conn)
        alone = own_transaction and driver.info.transaction_status == TransactionStatus.IDLE
        if alone:
            driver.autocommit = True
        try:
            with driver.cursor() as cursor:
                cursor.execute(self.postgres_sql, values)
                if cursor.description is None:
                    raws = []
                elif first:
                    raws = [raw] if (raw := cursor.fetchone()) is not None else []
                else:
                    raws = cursor.fetchall()
        except psycopg.Error as exc:
            # What SQLAlchemy would have raised: callers handle one family of errors. A connection
            # that broke is dropped rather than given back to the pool, and the error says so
            # (``connection_invalidated``), as SQLAlchemy's own disconnect handling does.
            lost = driver.broken or driver.closed
            if lost or isinstance(exc, psycopg.OperationalError):
                conn.invalidate()
            raise sa_exc.DBAPIError.instance(
                self.postgres_sql, params, exc, psycopg.Error, connection_invalidated=lost
            ) from exc
        finally:
            if alone and not driver.closed:
                driver.autocommit = False
        return [self._typed(raw) for raw in raws]

    def _typed(self, raw: Any) -> Any:
        pairs = zip(self._result_processors, raw, strict=True)
        return self._row(*(value if processor is None else processor(value) for processor, value in pairs))
