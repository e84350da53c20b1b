"""Worker heartbeats: each worker process writes its last beat, so a fleet with no live worker shows."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from jobs.observe.models import WorkerBeat

_beats = WorkerBeat.__table__


def record_beat(conn: Connection, worker_id: str, *, now: dt.datetime) -> None:
    """Write ``worker_id``'s beat at ``now`` in ``conn``'s transaction."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(_beats).values(worker_id=worker_id, beat_at=now)
    conn.execute(statement.on_conflict_do_update(index_elements=[_beats.c.worker_id], set_={"beat_at": now}))
