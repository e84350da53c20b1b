"""``jobctl schedules``: list, run, pause, resume and delete cron schedules."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from jobs import db
from jobs.config import get_settings
from jobs.scheduling import service, timing
from jobs.scheduling.views import ScheduleOut
from worker.cli.common import JsonOption, new_console, open_database, when

app = typer.Typer(help="Cron schedules: list, run now, pause, resume, delete.", no_args_is_help=True)

NameArgument = Annotated[str, typer.Argument(metavar="NAME", hidden=True)]


@app.command("list")
def schedules_list(as_json: JsonOption = False) -> None:
    """Every schedule, its timing, whether it is paused, and when it fires next."""
    settings = get_settings()
    with open_database(settings) as database, database.readers() as session:
        schedules = [ScheduleOut.model_validate(s) for s in service.list_schedules(session)]
    if as_json:
        typer.echo(json.dumps([s.model_dump(mode="json") for s in schedules]))
        return
    table = Table(title=f"{len(schedules)} schedule(s)")
    for column in ("name", "kind", "timing", "state", "next fire", "last fire"):
        table.add_column(column)
    for s in schedules:
        described = timing.Timing(cron=s.cron, every_seconds=s.every_seconds, timezone=s.timezone).describe()
        state = "paused" if s.paused else "active"
        table.add_row(s.name, s.kind, described, state, when(s.next_fire_at), when(s.last_fire_at))
    new_console().print(table)


@app.command("run")
def schedules_run(name: NameArgument, as_json: JsonOption = False) -> None:
    """Create NAME's job now, out of its timing (its timed fires go on)."""
    settings = get_settings()
    with open_database(settings) as database, db.session_scope(database.sessions) as session:
        job = service.run_schedule(session, name)
        job_id, status = job.id, job.status
    if as_json:
        typer.echo(json.dumps({"job_id": str(job_id), "status": status}))
    else:
        typer.echo(f"schedule {name}: job {job_id} {status}")


@app.command("pause")
def schedules_pause(name: NameArgument) -> None:
    """Stop NAME firing until resumed."""
    _change(name, service.pause_schedule, "paused")


@app.command("resume")
def schedules_resume(name: NameArgument) -> None:
    """Let NAME fire again, from its next time after now (paused times are not caught up)."""
    _change(name, service.resume_schedule, "resumed")


@app.command("delete")
def schedules_delete(name: NameArgument) -> None:
    """Delete NAME (its jobs stay). A schedule declared in code comes back at the next worker boot."""
    settings = get_settings()
    with open_database(settings) as database, db.session_scope(database.sessions) as session:
        service.delete_schedule(session, name)
    typer.echo(f"schedule {name} deleted")


def _change(name: str, change: service.Change, done: str) -> None:
    settings = get_settings()
    with open_database(settings) as database, db.session_scope(database.sessions) as session:
        schedule = change(session, name)
        next_fire = None if schedule.paused else when(schedule.next_fire_at)
    typer.echo(f"schedule {name} {done}" + (f"; next fire {next_fire}" if next_fire else ""))
