"""``jobctl replay``: failed jobs back to queued for a new run, keeping their history.

Exit codes: 0 when every job named or selected went through, 1 when some could not, 2 bad usage.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated

import typer
from rich.progress import Progress

from jobs import db, store
from jobs.config import get_settings
from jobs.kinds.batches import service as batches
from worker.cli.common import (
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
    job_ids: Annotated[list[str] | None, typer.Argument(help="Failed jobs to replay.")] = None,
    kind: Annotated[str | None, typer.Option(help="Failed jobs of this kind.")] = None,
    since: Annotated[str | None, typer.Option(help="Failed since (30m, 2h, 3d or ISO time).")] = None,
    until: Annotated[str | None, typer.Option(help="Failed before (30m, 2h, 3d or ISO time).")] = None,
    error_contains: Annotated[str | None, typer.Option(help="Error message contains this text.")] = None,
    error_type: Annotated[str | None, typer.Option(help="Error type is exactly this.")] = None,
    batch: Annotated[str | None, typer.Option(help="Failed chunk jobs of this batch.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many.")] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Every failed job (no other selector needed).")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why, kept in each job's history.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be replayed; change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Put failed jobs back to queued for a new run, keeping their history."""
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
        console = new_console()
        if not as_json:
            console.print(jobs_table(f"{len(selected)} failed job(s) selected", selected))
        if dry_run:
            if as_json:
                typer.echo(
                    json.dumps(
                        {"selected": [str(j.id) for j in selected], "replayed": [], "skipped": [], "dry_run": True}
                    )
                )
            return
        if selected and not yes and not typer.confirm(f"Replay {len(selected)} job(s)?", err=True):
            raise typer.Exit(1)
        if batch and selected:
            replayed = _replay_batch(database, batch, [job.id for job in selected], reason=reason)
        else:
            replayed = _replay_in_chunks(database, [job.id for job in selected], reason=reason, quiet=as_json)
    # Skipped: jobs named on the command line that are not failed (or do not exist), and selected
    # jobs that stopped being failed before our update (another replay took them).
    selected_ids, replayed_ids = {job.id for job in selected}, set(replayed)
    skipped = [i for i in dict.fromkeys(requested) if i not in selected_ids]
    skipped += [job.id for job in selected if job.id not in replayed_ids]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "selected": [str(j.id) for j in selected],
                    "replayed": [str(i) for i in replayed],
                    "skipped": [str(i) for i in skipped],
                    "dry_run": False,
                }
            )
        )
    else:
        console.print(f"replayed {len(replayed)}, skipped {len(skipped)} (not failed, or no longer)")
    if skipped:
        raise typer.Exit(1)


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
