"""``jobctl jobs``, ``stats``, ``sweep`` and ``prune``: inspect and maintain jobs."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from jobs import db, errors, idempotency, models, store, views
from jobs.config import get_settings
from worker import producer, sweeper
from worker.cli.common import (
    TIME_FORMS,
    JsonOption,
    UsageError,
    first_line,
    jobs_table,
    new_console,
    open_database,
    parse_duration,
    parse_ids,
    parse_time,
    when,
)

app = typer.Typer(help="Inspect jobs.", no_args_is_help=True)


@app.command("list")
def jobs_list(
    status: Annotated[models.JobStatus | None, typer.Option(help="Only this status.")] = None,
    kind: Annotated[str | None, typer.Option(metavar="KIND", help="Only this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, metavar="N", help="At most this many.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Jobs, newest first."""
    settings = get_settings()
    with open_database(settings) as database, database.readers() as session:
        jobs, _ = store.list_jobs(session, status=status, kind=kind, limit=limit)
    if as_json:
        typer.echo(json.dumps([views.JobSummary.model_validate(job).model_dump(mode="json") for job in jobs]))
    else:
        new_console().print(jobs_table(f"{len(jobs)} job(s), newest first", jobs))


@app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument(metavar="ID", hidden=True)], as_json: JsonOption = False) -> None:
    """A job's fields, attempt history and last traceback.

    ID is the job's ID. Its arguments (and any other structured field) print as indented JSON.
    """
    settings = get_settings()
    (parsed,) = parse_ids([job_id])
    with open_database(settings) as database, database.readers() as session:
        job = views.job_out(session, parsed)
    if as_json:
        typer.echo(job.model_dump_json())
        return
    console = new_console()
    fields = job.model_dump(exclude={"history", "error_traceback"})
    as_json_values = job.model_dump(mode="json", exclude={"history", "error_traceback"})
    for key, value in fields.items():
        if isinstance(value, dt.datetime):
            shown = when(value)
        elif isinstance(value, dict | list):
            shown = json.dumps(as_json_values[key], indent=2, ensure_ascii=False)
        else:
            shown = str(value)
        console.print(Text.assemble((key, "bold"), ": ", shown))
    table = Table(title="history")
    for column in ("run", "attempt", "outcome", "worker", "finished", "error"):
        table.add_column(column)
    for a in job.history:
        table.add_row(
            str(a.run),
            str(a.number),
            a.outcome,
            a.worker_id or "",
            when(a.finished_at),
            first_line(a.error_message, 60),
        )
    console.print(table)
    if job.error_traceback:
        console.print("[bold]last traceback[/bold]:")
        console.print(job.error_traceback, markup=False)


#: The longest ``--delay`` (a year), as ``POST /jobs`` caps ``delay_seconds``.
MAX_DELAY = dt.timedelta(days=366)
#: The longest ``--unique-key``, as the column (and ``POST /jobs``) holds.
MAX_UNIQUE_KEY = 200


@app.command("create")
def jobs_create(
    kind: Annotated[str, typer.Argument(metavar="KIND", hidden=True)],
    args: Annotated[str, typer.Option("--args", metavar="JSON", help="The job's arguments, a JSON object.")] = "{}",
    run_at: Annotated[
        str | None, typer.Option("--run-at", metavar="TIME", help="Run at this ISO 8601 time, with a timezone.")
    ] = None,
    delay: Annotated[
        str | None, typer.Option(metavar="DURATION", help="Run this long from now (30s, 30m, 2h, 3d, 1w).")
    ] = None,
    unique_key: Annotated[
        str | None,
        typer.Option(metavar="KEY", help="While a job of KIND with this key is unfinished, report that one instead."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a job of a public kind, as POST /jobs does; its ID goes to the workers once committed.

    KIND is a public job kind. With --run-at or --delay (not both) the job is scheduled until then.
    """
    parsed_args = _json_object(args)
    when_due = _aware_time(run_at) if run_at is not None else None
    delay_for = _delay(delay) if delay is not None else None
    if when_due is not None and delay_for is not None:
        raise UsageError("give --run-at or --delay, not both")
    if unique_key is not None and not 1 <= len(unique_key) <= MAX_UNIQUE_KEY:
        raise UsageError(f"--unique-key must be 1 to {MAX_UNIQUE_KEY} characters")
    settings = get_settings()
    with open_database(settings) as database, db.session_scope(database.sessions) as session:
        try:
            job, duplicate = store.create_or_find_job(
                session,
                kind,
                parsed_args,
                public_only=True,
                run_at=when_due,
                delay=delay_for,
                unique_key=unique_key,
            )
        except (errors.UnknownJobKind, errors.JobKindNotPublic, errors.InvalidJobArgs) as exc:
            raise UsageError(str(exc)) from exc
        job_id, job_status, due_at = job.id, models.JobStatus(job.status), job.run_at  # read before the commit
    if as_json:
        answer = {"job_id": str(job_id), "status": job_status.value, "duplicate": duplicate}
        typer.echo(json.dumps({**answer, "run_at": due_at.isoformat() if due_at else None}))
    elif duplicate:
        typer.echo(f"duplicate: job {job_id} ({job_status.value}) already holds key {unique_key!r}")
    else:
        due = f", runs at {when(due_at)}" if job_status == models.JobStatus.SCHEDULED else ""
        typer.echo(f"created job {job_id} ({job_status.value}{due})")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--args is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--args must be a JSON object, not {type(value).__name__}: {text}")
    return value


def _aware_time(text: str) -> dt.datetime:
    """An ISO 8601 time with a timezone, in UTC; a naive time is refused, as ``POST /jobs`` does."""
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--run-at is not an ISO 8601 time: {text!r}") from None
    if parsed.tzinfo is None:
        raise UsageError(f"--run-at needs a timezone (such as +01:00 or Z): {text!r}")
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        raise UsageError(f"--run-at is out of range: {text!r}") from None


def _delay(text: str) -> dt.timedelta:
    delay = parse_duration(text)
    if delay > MAX_DELAY:
        raise UsageError(f"--delay is at most {MAX_DELAY.days} days: {text!r}")
    return delay


def stats(as_json: JsonOption = False) -> None:
    """Counts by kind and status, and the age of the oldest queued job."""
    settings = get_settings()
    with open_database(settings) as database, database.readers() as session:
        counts = store.count_jobs(session)
        oldest = store.oldest_queued_at(session)
    age = (store.utcnow() - oldest).total_seconds() if oldest else None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "counts": [{"kind": k, "status": s, "count": n} for k, s, n in counts],
                    "oldest_queued_age_seconds": age,
                }
            )
        )
        return
    table = Table(title="jobs by kind and status")
    for column in ("kind", "status", "count"):
        table.add_column(column)
    for kind, status, count in counts:
        table.add_row(kind, status, str(count))
    console = new_console()
    console.print(table)
    console.print(f"oldest queued job: {'none' if age is None else f'{age:.0f} s ago'}")


def sweep(as_json: JsonOption = False) -> None:
    """Run one sweeper pass: take back jobs of dead workers, re-send jobs whose message seems lost."""
    settings = get_settings()
    broker = producer.make_broker(settings)
    try:
        with open_database(settings) as database:
            report = sweeper.sweep_once(database, settings, held=producer.held_probe(broker))
    finally:
        broker.close()
    summary = {
        "ran": report.ran,
        "requeued": [str(i) for i in report.requeued],
        "quarantined": [str(i) for i in report.quarantined],
        "resent": [str(i) for i in report.resent],
    }
    if as_json:
        typer.echo(json.dumps(summary))
    elif not report.ran:
        typer.echo("another sweeper pass is running; nothing done")
    else:
        typer.echo(
            f"requeued {len(report.requeued)}, quarantined {len(report.quarantined)}, re-sent {len(report.resent)}"
        )


def prune(
    succeeded_older_than: Annotated[
        str, typer.Option(metavar="AGE", help=f"Delete succeeded jobs finished longer ago than this ({TIME_FORMS}).")
    ] = "7d",
    failed_older_than: Annotated[
        str | None, typer.Option(metavar="AGE", help="Also delete failed jobs finished longer ago than this.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Delete old finished jobs and their history, in batches; failed ones only when asked; and
    the expired idempotency keys."""
    settings = get_settings()
    plan = [([models.JobStatus.SUCCEEDED, models.JobStatus.CANCELLED], parse_time(succeeded_older_than))]
    if failed_older_than is not None:
        plan.append(([models.JobStatus.FAILED], parse_time(failed_older_than)))
    deleted = 0
    with open_database(settings) as database:
        for statuses, before in plan:
            while True:
                with db.session_scope(database.sessions) as session:
                    batch = store.prune_jobs(session, statuses=statuses, older_than=before)
                deleted += batch
                if batch == 0:
                    break
        expired_keys = 0
        while True:
            with db.session_scope(database.sessions) as session:
                batch = idempotency.delete_expired(session)
            expired_keys += batch
            if batch == 0:
                break
    if as_json:
        typer.echo(json.dumps({"deleted": deleted, "expired_idempotency_keys": expired_keys}))
    else:
        typer.echo(f"deleted {deleted} job(s) and {expired_keys} expired idempotency key(s)")
