"""``jobctl replay``: failed jobs back to queued for a new run, keeping their history.

Exit codes: 0 when every job named or selected went through, 1 when some could not (a named job
that does not exist, or is not failed), 2 bad usage.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated

import typer
from rich.progress import Progress

from jobs import db, models, store
from jobs.config import get_settings
from jobs.kinds.batches import service as batches
from worker.cli.common import (
    DRY_RUN_NOTE,
    TIME_FORMS,
    JsonOption,
    UsageError,
    jobs_table,
    new_console,
    open_database,
    parse_ids,
    parse_time,
)

#: Jobs replayed per transaction.
REPLAY_CHUNK = 500


def replay(
    job_ids: Annotated[list[str] | None, typer.Argument(metavar="ID", hidden=True)] = None,
    kind: Annotated[str | None, typer.Option(metavar="KIND", help="Failed jobs of this kind.")] = None,
    since: Annotated[str | None, typer.Option(metavar="WHEN", help=f"Failed since ({TIME_FORMS}).")] = None,
    until: Annotated[str | None, typer.Option(metavar="WHEN", help=f"Failed before ({TIME_FORMS}).")] = None,
    error_contains: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Error message contains this text.")
    ] = None,
    error_type: Annotated[str | None, typer.Option(metavar="TYPE", help="Error type is exactly this.")] = None,
    batch: Annotated[str | None, typer.Option(metavar="ID", help="Failed chunk jobs of this batch.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, metavar="N", help="At most this many.")] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Every failed job (no other selector needed).")
    ] = False,
    reason: Annotated[str | None, typer.Option(metavar="TEXT", help="Why, kept in each job's history.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be replayed; change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Put failed jobs back to queued for a new run, keeping their history.

    Name the failed jobs by ID, select them with the options, or both (a job must match all).
    Exit 1 when a named job does not exist or is not failed, or a selected one was replayed meanwhile.
    """
    selectors = [job_ids, kind, since, until, error_contains, error_type, batch]
    if not all_failed and not any(selectors):
        raise UsageError("say which failed jobs to replay (IDs, --kind, --since, ...) or pass --all-failed")
    requested = parse_ids(job_ids or [])
    settings = get_settings()
    with open_database(settings) as database:
        with database.readers() as session:
            selected = store.select_failed_jobs(
                session,
                job_ids=requested,
                kind=kind,
                since=parse_time(since) if since else None,
                until=parse_time(until) if until else None,
                error_contains=error_contains,
                error_type=error_type,
                batch_id=batch,
                limit=limit,
            )
            missing = store.missing_jobs(session, requested)
        console = new_console()
        if not as_json:
            console.print(jobs_table(f"{len(selected)} failed job(s) selected", selected))
            for job_id in missing:
                console.print(f"no such job: {job_id}")
        if dry_run:
            if as_json:
                typer.echo(json.dumps(_summary(selected, [], [], missing, dry_run=True)))
            else:
                console.print(f"{DRY_RUN_NOTE}; {len(selected)} job(s) would be replayed")
            return
        if selected and not yes and not typer.confirm(f"Replay {len(selected)} job(s)?", err=True):
            raise typer.Exit(1)
        if batch and selected:
            replayed = _replay_batch(database, batch, [job.id for job in selected], reason=reason)
        else:
            replayed = _replay_in_chunks(database, [job.id for job in selected], reason=reason, quiet=as_json)
    # Skipped: jobs named on the command line that exist but are not failed, and selected jobs that
    # stopped being failed before our update (another replay took them). Missing: named, no such job.
    selected_ids, replayed_ids, missing_ids = {job.id for job in selected}, set(replayed), set(missing)
    skipped = [i for i in dict.fromkeys(requested) if i not in selected_ids and i not in missing_ids]
    skipped += [job.id for job in selected if job.id not in replayed_ids]
    if as_json:
        typer.echo(json.dumps(_summary(selected, replayed, skipped, missing, dry_run=False)))
    else:
        line = f"replayed {len(replayed)}, skipped {len(skipped)} (not failed, or no longer)"
        console.print(line + (f", missing {len(missing)} (no such job)" if missing else ""))
    if skipped or missing:
        raise typer.Exit(1)


def _summary(
    selected: list[models.Job],
    replayed: list[uuid.UUID],
    skipped: list[uuid.UUID],
    missing: list[uuid.UUID],
    *,
    dry_run: bool,
) -> dict[str, object]:
    return {
        "selected": [str(job.id) for job in selected],
        "replayed": [str(i) for i in replayed],
        "skipped": [str(i) for i in skipped],
        "missing": [str(i) for i in missing],
        "dry_run": dry_run,
    }


def _replay_batch(
    database: db.Database, batch: str, job_ids: list[uuid.UUID], *, reason: str | None
) -> list[uuid.UUID]:
    """Replay a batch's selected failed jobs and reopen the batch for a new run, in one transaction."""
    try:
        batch_id = uuid.UUID(batch)
    except ValueError:
        raise UsageError(f"not a batch ID: {batch}") from None
    with db.session_scope(database.sessions) as session:
        return batches.replay_batch(session, batch_id, reason=reason, job_ids=job_ids)


def _replay_in_chunks(
    database: db.Database, job_ids: list[uuid.UUID], *, reason: str | None, quiet: bool
) -> list[uuid.UUID]:
    replayed: list[uuid.UUID] = []
    with Progress(console=new_console(err=True), disable=quiet or len(job_ids) <= REPLAY_CHUNK) as progress:
        task = progress.add_task("replaying", total=len(job_ids))
        for start in range(0, len(job_ids), REPLAY_CHUNK):
            chunk = job_ids[start : start + REPLAY_CHUNK]
            with db.session_scope(database.sessions) as session:
                replayed += store.replay_jobs(session, chunk, reason=reason)
            progress.advance(task, len(chunk))
    return replayed
