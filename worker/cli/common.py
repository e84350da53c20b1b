"""What the ``jobctl`` commands share: the database, the console, parsing and printing."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import uuid
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from jobs import db, kinds, models, store
from jobs.config import Settings
from worker import producer

#: Exit code for bad usage (as Click uses).
USAGE_ERROR = 2

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

#: What a ``--dry-run`` ends with, so nobody wonders whether it did something.
DRY_RUN_NOTE = "dry run: nothing was changed"

#: The forms ``parse_time`` takes, for help texts: seconds, minutes, hours, days or weeks ago.
TIME_FORMS = "30s, 30m, 2h, 3d, 1w or an ISO time"


class UsageError(Exception):
    """The command was called in a way it refuses."""


def new_console(err: bool = False) -> Console:
    # Rich leaves colour out when NO_COLOR is set or the output is not a terminal.
    return Console(stderr=err, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def open_database(settings: Settings) -> Iterator[db.Database]:
    """A database that knows the job kinds and whose sessions send job IDs to the broker after commit."""
    broker = producer.make_broker(settings)
    database = db.make_database(
        settings.database_url,
        pool_size=2,
        sender=producer.make_sender(broker),
        registry=kinds.load_registry(settings),
        application_name="jobctl",
    )
    try:
        yield database
    finally:
        database.dispose()
        broker.close()


_DURATION = re.compile(r"^(\d+)([smhdw])$")


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str) -> dt.timedelta:
    """``30s``, ``30m``, ``2h``, ``3d`` or ``1w``."""
    match = _DURATION.match(value.strip())
    if not match:
        raise UsageError(f"not a duration (30s, 30m, 2h, 3d, 1w): {value!r}")
    try:
        return dt.timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    except OverflowError:
        raise UsageError(f"too long a duration: {value!r}") from None


def parse_time(value: str) -> dt.datetime:
    """``30m``, ``2h``, ``3d``, ``1w`` (that long ago) or an ISO time (UTC if it names no zone)."""
    if _DURATION.match(value.strip()):
        return store.utcnow() - parse_duration(value)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"not a duration (30s, 30m, 2h, 3d, 1w) or an ISO time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def parse_ids(values: list[str]) -> list[uuid.UUID]:
    try:
        return [uuid.UUID(value) for value in values]
    except ValueError:
        raise UsageError(f"not job IDs: {' '.join(values)}") from None


def first_line(text: str | None, width: int = 70) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def when(value: dt.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def jobs_table(title: str, jobs: list[models.Job]) -> Table:
    table = Table(title=title)
    for column in ("id", "kind", "status", "attempts", "finished", "error"):
        table.add_column(column, overflow="fold" if column == "id" else "ellipsis")
    for job in jobs:
        table.add_row(
            str(job.id),
            job.kind,
            job.status,
            f"{job.attempts}/{job.max_attempts}",
            when(job.finished_at),
            first_line(job.error_message, 60),
        )
    return table
