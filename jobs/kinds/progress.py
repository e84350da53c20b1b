"""The progress of the batches and files still open, summed: what the metrics show of the shipped
kinds (read through the partial indexes ``ix_batches_open`` and ``ix_files_open``)."""

from __future__ import annotations

import dataclasses

from sqlalchemy import Connection, func, literal_column, select

from jobs.kinds.batches.models import Batch, BatchStatus
from jobs.kinds.files.models import File, FileStatus

_OPEN_BATCHES = (BatchStatus.PLANNING, BatchStatus.RUNNING)
_OPEN_FILES = (FileStatus.PENDING, FileStatus.PROCESSING)


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """How many are open, and their summed counts by name."""

    open: int
    totals: dict[str, int]


def _in(column: object, values: tuple[str, ...]) -> object:
    return column.in_([literal_column(f"'{value}'") for value in values])  # type: ignore[attr-defined]


def open_batches(conn: Connection) -> Progress:
    """The batches not finished: records in them, processed, failed; chunks total and done."""
    b = Batch.__table__
    row = conn.execute(
        select(
            func.count(),
            *(func.coalesce(func.sum(b.c[name]), 0) for name in ("total", "processed", "failed")),
        ).where(_in(b.c.status, _OPEN_BATCHES))  # type: ignore[arg-type]
    ).one()
    return Progress(int(row[0]), {"total": int(row[1]), "processed": int(row[2]), "failed": int(row[3])})


def open_files(conn: Connection) -> Progress:
    """The files still importing: bytes in them and read, rows imported and rejected."""
    f = File.__table__
    names = ("size_bytes", "byte_offset", "rows_imported", "rows_rejected")
    row = conn.execute(
        select(func.count(), *(func.coalesce(func.sum(f.c[name]), 0) for name in names)).where(
            _in(f.c.status, _OPEN_FILES)  # type: ignore[arg-type]
        )
    ).one()
    return Progress(int(row[0]), {name: int(value) for name, value in zip(names, row[1:], strict=True)})
