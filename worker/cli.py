"""``jobctl``: run the processes, migrate the database, inspect, sweep, prune and replay jobs.

Exit codes: 0 success, 1 an operation failed or only partly went through, 2 bad usage (Click's
own code for a bad option, and ours for a missing selector or a bad setting). Errors are one line
on stderr; ``-v`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import click
import pydantic
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import exc as sa_exc

from jobs import db, errors, migrate, models, projections, registry, store
from jobs.config import Settings, get_settings
from worker import broker as worker_broker
from worker import devmode, sender, sweeper

app = typer.Typer(
    help="jobrunner: background jobs with one database session per job.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect jobs.", no_args_is_help=True)
events_app = typer.Typer(help="Domain events and their projections.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(jobs_app, name="jobs")
app.add_typer(events_app, name="events")

logger = logging.getLogger(__name__)

#: Exit code for bad usage (as Click uses).
USAGE_ERROR = 2
#: Jobs replayed per transaction.
REPLAY_CHUNK = 500

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class UsageError(Exception):
    """The command was called in a way it refuses."""


def _console(err: bool = False) -> Console:
    # Rich leaves colour out when NO_COLOR is set or the output is not a terminal.
    return Console(stderr=err, highlight=False, soft_wrap=True)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[db.Database]:
    """A database whose sessions send job IDs to the broker after commit."""
    broker = worker_broker.make_broker(settings)
    registry.load_kinds(settings.job_module_names)
    database = db.make_database(settings.database_url, pool_size=2, sender=sender.make_sender(broker),
                                application_name="jobctl")
    try:
        yield database
    finally:
        database.dispose()
        broker.close()


# --- processes ----------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Alembic revision.")] = "heads") -> None:
    """Bring the database schema up to date."""
    settings = get_settings()
    migrate.upgrade(settings.database_url, revision)
    typer.echo(f"database at {devmode.safe_url(settings.database_url)} is up to date ({revision})")


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
) -> None:
    """Run the HTTP API (uvicorn)."""
    get_settings()  # refuse bad settings before uvicorn starts
    # Replace this process with uvicorn's own CLI: the API then carries none of the CLI's imports
    # (Typer, Rich, the worker), about 14 MB less resident memory.
    argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
            "--workers", str(workers), "--log-level", "info"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


@app.command()
def worker(
    processes: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    threads: Annotated[int, typer.Option(min=1, help="Threads per process.")] = 8,
    queues: Annotated[list[str] | None, typer.Option(help="Only these queues (repeatable).")] = None,
) -> None:
    """Run Dramatiq's worker (its own process machinery) on the job queues."""
    settings = get_settings()
    # Dramatiq reads these once, when dramatiq.worker is first imported, and this process has
    # imported it already: exec a fresh interpreter running Dramatiq's own CLI (same PID, so
    # signals sent to `jobctl worker` reach Dramatiq's master) with them in its environment.
    env = dict(os.environ, dramatiq_worker_timeout=str(settings.consumer_timeout_ms))
    if settings.prefetch:
        env["dramatiq_queue_prefetch"] = str(settings.prefetch)
    # Dramatiq's own shutdown wait must outlast ours, so interrupted jobs are recorded before exit.
    shutdown_ms = int((settings.shutdown_timeout_seconds + devmode.SHUTDOWN_GRACE_SECONDS) * 1000)
    argv = [sys.executable, "-m", "dramatiq", "worker.entry", "--processes", str(processes), "--threads", str(threads),
            "--worker-shutdown-timeout", str(shutdown_ms)]
    if queues:
        argv += ["--queues", *queues]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


@app.command()
def dev(
    port: Annotated[int, typer.Option(min=1, max=65535, help="API port.")] = 8000,
    threads: Annotated[int, typer.Option(min=1, help="Worker threads.")] = 4,
) -> None:
    """API and one worker together on the embedded defaults (SQLite, a private Redis); Ctrl-C stops."""
    try:
        with devmode.DevStack(port=port, threads=threads) as stack:
            _console().print(f"jobrunner dev: API on {stack.api_url}  (Ctrl-C stops)")
            stack.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, even during start-up: the children are stopped
        pass


@app.command()
def demo(
    rows: Annotated[int, typer.Option(min=10, help="Rows of the demo CSV.")] = 20_000,
    port: Annotated[int, typer.Option(min=0, max=65535, help="API port (0: any free one).")] = 0,
) -> None:
    """Run the whole pipeline on the embedded defaults, as a user would drive it over HTTP."""
    from worker import demo as demo_module

    raise typer.Exit(demo_module.run(rows=rows, port=port, console=_console()))


@app.command()
def sweep(as_json: JsonOption = False) -> None:
    """Run one sweeper pass: take back jobs of dead workers, re-send jobs whose message seems lost."""
    settings = get_settings()
    with _database(settings) as database:
        report = sweeper.sweep_once(database, settings)
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
        typer.echo(f"requeued {len(report.requeued)}, quarantined {len(report.quarantined)}, "
                   f"re-sent {len(report.resent)}")


@app.command()
def prune(
    succeeded_older_than: Annotated[str, typer.Option(help="Delete succeeded jobs finished before this (e.g. 7d).")] = "7d",
    failed_older_than: Annotated[str | None, typer.Option(help="Also delete failed jobs finished before this.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Delete old finished jobs and their history, in batches; failed ones only when asked."""
    settings = get_settings()
    plan = [([models.JobStatus.SUCCEEDED, models.JobStatus.CANCELLED], parse_time(succeeded_older_than))]
    if failed_older_than is not None:
        plan.append(([models.JobStatus.FAILED], parse_time(failed_older_than)))
    deleted = 0
    with _database(settings) as database:
        for statuses, before in plan:
            while True:
                with db.session_scope(database.sessions) as session:
                    batch = store.prune_jobs(session, statuses=statuses, older_than=before)
                deleted += batch
                if batch == 0:
                    break
    typer.echo(json.dumps({"deleted": deleted}) if as_json else f"deleted {deleted} job(s)")


# --- inspecting ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str) -> dt.datetime:
    """``30m``, ``2h``, ``3d`` (that long ago) or an ISO time (UTC if it names no zone)."""
    match = _DURATION.match(value.strip())
    if match:
        return store.utcnow() - dt.timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"not a duration (30m, 2h, 3d) or an ISO time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _parse_ids(values: list[str]) -> list[uuid.UUID]:
    try:
        return [uuid.UUID(value) for value in values]
    except ValueError:
        raise UsageError(f"not job IDs: {' '.join(values)}") from None


def _first_line(text: str | None, width: int = 70) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _when(value: dt.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def _job_dict(job: models.Job) -> dict[str, Any]:
    return {
        "id": str(job.id), "kind": job.kind, "queue": job.queue, "status": job.status, "args": job.args,
        "attempts": job.attempts, "max_attempts": job.max_attempts, "replay_count": job.replay_count,
        "error_type": job.error_type, "error_message": job.error_message,
        "created_at": _when(job.created_at), "started_at": _when(job.started_at),
        "finished_at": _when(job.finished_at), "next_retry_at": _when(job.next_retry_at),
    }


def _jobs_table(title: str, jobs: list[models.Job]) -> Table:
    table = Table(title=title)
    for column in ("id", "kind", "status", "attempts", "finished", "error"):
        table.add_column(column, overflow="fold" if column == "id" else "ellipsis")
    for job in jobs:
        table.add_row(str(job.id), job.kind, job.status, f"{job.attempts}/{job.max_attempts}",
                      _when(job.finished_at), _first_line(job.error_message, 60))
    return table


@jobs_app.command("list")
def jobs_list(
    status: Annotated[models.JobStatus | None, typer.Option(help="Only this status.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Jobs, newest first."""
    settings = get_settings()
    with _database(settings) as database, database.readers() as session:
        jobs, _ = store.list_jobs(session, status=status, kind=kind, limit=limit)
    if as_json:
        typer.echo(json.dumps([_job_dict(job) for job in jobs]))
    else:
        _console().print(_jobs_table(f"{len(jobs)} job(s), newest first", jobs))


@jobs_app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument(help="The job's ID.")], as_json: JsonOption = False) -> None:
    """A job's fields, attempt history and last traceback."""
    settings = get_settings()
    (parsed,) = _parse_ids([job_id])
    with _database(settings) as database, database.readers() as session:
        job = store.get_job(session, parsed)
        history = store.list_attempts(session, parsed)
    if as_json:
        typer.echo(json.dumps({**_job_dict(job), "error_traceback": job.error_traceback, "history": [
            {"run": a.run, "number": a.number, "outcome": a.outcome, "worker_id": a.worker_id,
             "started_at": _when(a.started_at), "finished_at": _when(a.finished_at),
             "error_type": a.error_type, "error_message": a.error_message} for a in history]}))
        return
    console = _console()
    for key, value in _job_dict(job).items():
        console.print(f"[bold]{key}[/bold]: {value}")
    table = Table(title="history")
    for column in ("run", "attempt", "outcome", "worker", "finished", "error"):
        table.add_column(column)
    for a in history:
        table.add_row(str(a.run), str(a.number), a.outcome, a.worker_id or "", _when(a.finished_at),
                      _first_line(a.error_message, 60))
    console.print(table)
    if job.error_traceback:
        console.print("[bold]last traceback[/bold]:")
        console.print(job.error_traceback, markup=False)


@app.command()
def stats(as_json: JsonOption = False) -> None:
    """Counts by kind and status, and the age of the oldest queued job."""
    settings = get_settings()
    with _database(settings) as database, database.readers() as session:
        counts = store.count_jobs(session)
        oldest = store.oldest_queued_at(session)
    age = (store.utcnow() - oldest).total_seconds() if oldest else None
    if as_json:
        typer.echo(json.dumps({"counts": [{"kind": k, "status": s, "count": n} for k, s, n in counts],
                               "oldest_queued_age_seconds": age}))
        return
    table = Table(title="jobs by kind and status")
    for column in ("kind", "status", "count"):
        table.add_column(column)
    for kind, status, count in counts:
        table.add_row(kind, status, str(count))
    console = _console()
    console.print(table)
    console.print(f"oldest queued job: {'none' if age is None else f'{age:.0f} s ago'}")


@events_app.command("rebuild")
def events_rebuild(
    projection: Annotated[str, typer.Argument(help="The projection: orgs or products.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only compare with the live rows; change nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Recompute a projection from its initial rows and the ledger of applied events."""
    with _database(get_settings()) as database, db.session_scope(database.sessions) as session:
        report = projections.rebuild_projection(session, projection, dry_run=dry_run)
    summary = {"projection": report.projection, "rows": report.rows, "matched": report.matched, "dry_run": dry_run,
               "changed": [str(k) for k in report.changed], "missing": [str(k) for k in report.missing],
               "extra": [str(k) for k in report.extra]}
    if as_json:
        typer.echo(json.dumps(summary))
    elif report.matched:
        typer.echo(f"{projection}: {report.rows} rows recomputed; live equals rebuilt")
    else:
        typer.echo(f"{projection}: {report.rows} rows; {'would fix' if dry_run else 'fixed'} {len(report.changed)} "
                   f"changed, {len(report.missing)} missing, {len(report.extra)} extra")


# --- replaying ----------------------------------------------------------------------------------


@app.command()
def replay(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Failed jobs to replay.")] = None,
    kind: Annotated[str | None, typer.Option(help="Failed jobs of this kind.")] = None,
    since: Annotated[str | None, typer.Option(help="Failed since (30m, 2h, 3d or ISO time).")] = None,
    until: Annotated[str | None, typer.Option(help="Failed before (30m, 2h, 3d or ISO time).")] = None,
    error_contains: Annotated[str | None, typer.Option(help="Error message contains this text.")] = None,
    error_type: Annotated[str | None, typer.Option(help="Error type is exactly this.")] = None,
    batch: Annotated[str | None, typer.Option(help="Failed chunk jobs of this batch.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many.")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed job (no other selector needed).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why, kept in each job's history.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be replayed; change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Put failed jobs back to queued for a new run, keeping their history."""
    selectors = [job_ids, kind, since, until, error_contains, error_type, batch]
    if not all_failed and not any(selectors):
        raise UsageError("say which failed jobs to replay (IDs, --kind, --since, ...) or pass --all-failed")
    requested = _parse_ids(job_ids or [])
    settings = get_settings()
    with _database(settings) as database:
        with database.readers() as session:
            selected = store.select_failed_jobs(
                session, job_ids=requested, kind=kind,
                since=parse_time(since) if since else None, until=parse_time(until) if until else None,
                error_contains=error_contains, error_type=error_type, batch_id=batch, limit=limit,
            )
        console = _console()
        if not as_json:
            console.print(_jobs_table(f"{len(selected)} failed job(s) selected", selected))
        if dry_run:
            if as_json:
                typer.echo(json.dumps({"selected": [str(j.id) for j in selected], "replayed": [], "skipped": [],
                                       "dry_run": True}))
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
        typer.echo(json.dumps({"selected": [str(j.id) for j in selected], "replayed": [str(i) for i in replayed],
                               "skipped": [str(i) for i in skipped], "dry_run": False}))
    else:
        console.print(f"replayed {len(replayed)}, skipped {len(skipped)} (not failed, or no longer)")
    if skipped:
        raise typer.Exit(1)


def _replay_batch(database: db.Database, batch: str, job_ids: list[uuid.UUID], *, reason: str | None) -> list[uuid.UUID]:
    """Replay a batch's selected failed jobs and reopen the batch for a new run, in one transaction."""
    try:
        batch_id = uuid.UUID(batch)
    except ValueError:
        raise UsageError(f"not a batch ID: {batch}") from None
    with db.session_scope(database.sessions) as session:
        return store.replay_batch(session, batch_id, reason=reason, job_ids=job_ids)


def _replay_in_chunks(database: db.Database, job_ids: list[uuid.UUID], *, reason: str | None, quiet: bool) -> list[uuid.UUID]:
    replayed: list[uuid.UUID] = []
    with Progress(console=_console(err=True), disable=quiet or len(job_ids) <= REPLAY_CHUNK) as progress:
        task = progress.add_task("replaying", total=len(job_ids))
        for start in range(0, len(job_ids), REPLAY_CHUNK):
            chunk = job_ids[start : start + REPLAY_CHUNK]
            with db.session_scope(database.sessions) as session:
                replayed += store.replay_jobs(session, chunk, reason=reason)
            progress.advance(task, len(chunk))
    return replayed


def main() -> None:
    """Console-script entry: errors become one line on stderr (the traceback only with ``-v``)."""
    verbose = any(arg in ("-v", "--verbose") for arg in sys.argv[1:])
    try:
        # standalone_mode=False: Click returns the exit code and raises its errors to us.
        code = app(standalone_mode=False)
    except (UsageError, pydantic.ValidationError) as exc:
        _fail(exc, USAGE_ERROR, verbose)
    except errors.JobError as exc:
        _fail(exc, 1, verbose)
    except sa_exc.DBAPIError as exc:
        if _is_missing_schema(exc):
            exc = RuntimeError("the database has no jobrunner tables yet: run `jobctl db upgrade` first")
        _fail(exc, 1, verbose)
    except typer.Abort:
        _fail(RuntimeError("aborted"), 1, verbose)
    except (typer.TyperException, click.ClickException) as exc:
        # Click's own errors (a bad option is usage: 2). Recent Typer raises them from its own
        # copy of Click, which click.ClickException does not match.
        _fail(exc, exc.exit_code, verbose)
    except Exception as exc:  # noqa: BLE001 - the CLI's edge: one line, not a traceback
        _fail(exc, 1, verbose)
    sys.exit(code if isinstance(code, int) else 0)


def _is_missing_schema(exc: sa_exc.DBAPIError) -> bool:
    message = str(exc.orig)
    return "no such table" in message or ("relation" in message and "does not exist" in message)


def _fail(exc: BaseException, code: int, verbose: bool) -> None:
    if verbose:
        import traceback

        traceback.print_exception(exc)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, pydantic.ValidationError):
        message = "bad setting: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
