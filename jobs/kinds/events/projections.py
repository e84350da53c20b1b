"""Projections kept by event handlers, and their rebuild from initial rows plus the ledger of
applied (event, handler) rows: ``jobctl events rebuild <projection>`` must come out equal to the
live tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, delete, insert, select, text, update
from sqlalchemy.orm import Session

from jobs.kinds.events import errors as event_errors

#: Recomputes a projection: its rows by key, each a dict of the compared columns.
Recompute = Callable[[Session], dict[Any, dict[str, Any]]]


@dataclasses.dataclass(frozen=True, slots=True)
class Projection:
    """A table kept by event handlers, and how to recompute it from initial rows and the ledger."""

    name: str
    table: Table
    #: The key column; the other compared columns are the keys of what ``recompute`` returns.
    key: str
    recompute: Recompute
    #: Whether a rebuild deletes live rows the recomputation does not have (rows made only by events).
    delete_extra: bool


_projections: dict[str, Projection] = {}


def projection(name: str, *, table: Table, key: str, delete_extra: bool = False) -> Callable[[Recompute], Recompute]:
    """Register the decorated function as the recomputation of projection ``name``."""

    def register(recompute: Recompute) -> Recompute:
        _projections[name] = Projection(name, table, key, recompute, delete_extra)
        return recompute

    return register


def projection_names() -> list[str]:
    """The registered projections, by name."""
    return sorted(_projections)


@dataclasses.dataclass(frozen=True, slots=True)
class RebuildReport:
    """How a rebuild went: rows recomputed, and the keys whose live rows differed (now fixed, unless
    it was a dry run)."""

    projection: str
    rows: int
    changed: list[Any]
    missing: list[Any]
    extra: list[Any]
    dry_run: bool

    @property
    def matched(self) -> bool:
        """Whether the live projection already equalled the recomputed one."""
        return not (self.changed or self.missing or self.extra)


def rebuild_projection(session: Session, name: str, *, dry_run: bool = False) -> RebuildReport:
    """Recompute projection ``name`` from its initial rows and the ledger, and write it (in
    ``session``; the caller commits) unless ``dry_run``.

    On PostgreSQL the projection's table is locked against writes first (SHARE ROW EXCLUSIVE), so a
    handler applying an event meanwhile waits, then applies on top of the rebuilt rows. (SQLite
    serialises writers anyway.)

    Raises:
        UnknownProjection: none is registered under ``name``.
    """
    spec = _projections.get(name)
    if spec is None:
        raise event_errors.UnknownProjection(f"unknown projection {name!r}; known: {', '.join(projection_names())}")
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"LOCK TABLE {spec.table.name} IN SHARE ROW EXCLUSIVE MODE"))
    computed = spec.recompute(session)
    key = spec.table.c[spec.key]
    columns = sorted({column for values in computed.values() for column in values})
    # Each row is the key, then one value per column.
    rows = session.execute(select(key, *(spec.table.c[c] for c in columns)))
    live = {row[0]: dict(zip(columns, row[1:], strict=True)) for row in rows}
    changed = [k for k, values in computed.items() if k in live and live[k] != values]
    missing = [k for k in computed if k not in live]
    extra = [k for k in live if k not in computed] if spec.delete_extra else []
    if not dry_run:
        _write_projection(session, spec, computed, changed=changed, missing=missing, extra=extra)
    return RebuildReport(name, len(computed), changed, missing, extra, dry_run)


def _write_projection(
    session: Session,
    spec: Projection,
    computed: dict[Any, dict[str, Any]],
    *,
    changed: list[Any],
    missing: list[Any],
    extra: list[Any],
) -> None:
    key = spec.table.c[spec.key]
    for k in changed:
        session.execute(update(spec.table).where(key == k).values(**computed[k]))
    if missing:
        session.execute(insert(spec.table), [{spec.key: k, **computed[k]} for k in missing])
    if extra:
        session.execute(delete(spec.table).where(key.in_(extra)))
