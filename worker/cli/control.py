"""``jobctl cancel`` and ``jobctl queues list|pause|resume``: stop jobs, pause and resume queues.

Exit codes: 0 when everything asked went through, 1 when some could not (a named job that does
not exist or has finished, an unknown queue), 2 bad usage.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated

import typer
from rich.table import Table

from jobs import db, store
from jobs.config import get_settings
from worker.cli.common import DRY_RUN_NOTE, JsonOption, UsageError, jobs_table, new_console, open_database, parse_ids

#: Jobs cancelled per transaction.
CANCEL_CHUNK = 500

app = typer.Typer(help="Queues: list them, pause and resume one.", no_args_is_help=True)


def cancel(
    job_ids: Annotated[list[str] | None, typer.Argument(metavar="ID", hidden=True)] = None,
    kind: Annotated[str | None, typer.Option(metavar="KIND", help="Unfinished jobs of this kind.")] = None,
    queue: Annotated[str | None, typer.Option(metavar="QUEUE", help="Unfinished jobs of this queue.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, metavar="N", help="At most this many.")] = None,
    reason: Annotated[str | None, typer.Option(metavar="TEXT", help="Why, kept on each job.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be cancelled; change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Cancel jobs: queued or retrying ones at once; running ones are asked to stop and end
    cancelled within a few seconds (their work rolled back).

    Name the jobs by ID, select them with --kind or --queue, or both (a job must match all).
    Exit 1 when a named job does not exist or has finished.
    """
    if not (job_ids or kind or queue):
        raise UsageError("say which jobs to cancel (IDs, --kind or --queue)")
    requested = parse_ids(job_ids or [])
    with open_database(get_settings()) as database:
        with database.readers() as session:
            selected = store.select_cancellable_jobs(session, job_ids=requested, kind=kind, queue=queue, limit=limit)
            missing = store.missing_jobs(session, requested)
        console = new_console()
        if not as_json:
            console.print(jobs_table(f"{len(selected)} unfinished job(s) selected", selected))
        if dry_run:
            if as_json:
                typer.echo(json.dumps({"selected": [str(job.id) for job in selected], "dry_run": True}))
            else:
                console.print(f"{DRY_RUN_NOTE}; {len(selected)} job(s) would be cancelled")
            return
        if selected and not yes and not typer.confirm(f"Cancel {len(selected)} job(s)?", err=True):
            raise typer.Exit(1)
        cancelled, stopping = _cancel_in_chunks(database, [job.id for job in selected], reason=reason)
    done = set(cancelled) | set(stopping)
    skipped = [i for i in dict.fromkeys(requested) if i not in done and i not in set(missing)]
    skipped += [job.id for job in selected if job.id not in done and job.id not in skipped]
    if as_json:
        summary = {"cancelled": cancelled, "stopping": stopping, "skipped": skipped, "missing": missing}
        typer.echo(json.dumps({key: [str(i) for i in ids] for key, ids in summary.items()} | {"dry_run": False}))
    else:
        console.print(
            f"cancelled {len(cancelled)}, stopping {len(stopping)} (running: they end cancelled within seconds), "
            f"skipped {len(skipped)} (finished)" + (f", missing {len(missing)} (no such job)" if missing else "")
        )
    if skipped or missing:
        raise typer.Exit(1)


def _cancel_in_chunks(
    database: db.Database, job_ids: list[uuid.UUID], *, reason: str | None
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    cancelled: list[uuid.UUID] = []
    stopping: list[uuid.UUID] = []
    for start in range(0, len(job_ids), CANCEL_CHUNK):
        with db.session_scope(database.sessions) as session:
            done = store.cancel(session, job_ids[start : start + CANCEL_CHUNK], reason=reason)
        cancelled += done.cancelled
        stopping += done.stopping
    return cancelled, stopping


@app.command("list")
def queues_list(as_json: JsonOption = False) -> None:
    """Every queue: its jobs by state, how long the oldest queued one waits, paused or not."""
    with open_database(get_settings()) as database, database.readers() as session:
        queues = store.list_queues(session)
    if as_json:
        typer.echo(json.dumps([_queue_json(queue) for queue in queues]))
        return
    table = Table(title=f"{len(queues)} queue(s)")
    for column in ("queue", "paused", "queued", "running", "retrying", "oldest queued", "other"):
        table.add_column(column)
    for queue in queues:
        counts = dict(queue.counts)
        shown = [counts.pop(status, 0) for status in ("queued", "running", "retrying")]
        oldest = "" if queue.oldest_queued_seconds is None else f"{queue.oldest_queued_seconds:.0f} s"
        other = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
        table.add_row(queue.name, "paused" if queue.paused else "", *map(str, shown), oldest, other)
    new_console().print(table)


def _queue_json(queue: store.QueueInfo) -> dict[str, object]:
    return {
        "name": queue.name,
        "counts": queue.counts,
        "oldest_queued_seconds": queue.oldest_queued_seconds,
        "paused": queue.paused,
        "paused_at": queue.paused_at.isoformat() if queue.paused_at else None,
        "pause_reason": queue.pause_reason,
    }


@app.command("pause")
def queues_pause(
    name: Annotated[str, typer.Argument(metavar="QUEUE", hidden=True)],
    reason: Annotated[str | None, typer.Option(metavar="TEXT", help="Why, shown by queues list.")] = None,
) -> None:
    """Start no new job of QUEUE until it is resumed; running jobs finish, the rest stay queued."""
    with open_database(get_settings()) as database, db.session_scope(database.sessions) as session:
        changed = store.pause_queue(session, name, reason=reason)
    new_console().print(f"queue {name} paused" if changed else f"queue {name} was paused already")


@app.command("resume")
def queues_resume(name: Annotated[str, typer.Argument(metavar="QUEUE", hidden=True)]) -> None:
    """Start the jobs of QUEUE again: its waiting jobs are sent to the workers at once."""
    with open_database(get_settings()) as database, db.session_scope(database.sessions) as session:
        resent = store.resume_queue(session, name)
    if resent is None:
        new_console().print(f"queue {name} was not paused")
    else:
        new_console().print(f"queue {name} resumed; {resent} waiting job(s) sent to the workers")
