"""Named counters kept in the database, in the caller's transaction (see :class:`NamedCounter`)."""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from jobs.observe.models import NamedCounter

#: The sweeper's re-sends of jobs whose message seemed lost.
SWEEPER_RESENDS = "sweeper_resends"

_counters = NamedCounter.__table__


def add_to_counter(conn: Connection, name: str, amount: int) -> None:
    """Add ``amount`` to the counter ``name`` in ``conn``'s transaction (committed with it)."""
    if amount <= 0:
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(_counters).values(name=name, value=amount)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[_counters.c.name], set_={"value": _counters.c.value + statement.excluded.value}
        )
    )
