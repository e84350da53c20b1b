"""``jobctl``: run the processes, migrate the database, inspect and replay jobs."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from jobs import errors, migrate
from jobs.config import get_settings

app = typer.Typer(help="jobrunner: background jobs with one database session per job.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

logger = logging.getLogger(__name__)


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")] = False,
) -> None:
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Alembic revision.")] = "heads") -> None:
    """Bring the database schema up to date."""
    settings = get_settings()
    migrate.upgrade(settings.database_url, revision)
    typer.echo(f"database at {_safe_url(settings.database_url)} is at {revision}")


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    get_settings()  # refuse bad settings before uvicorn starts
    uvicorn.run("api.main:app", host=host, port=port, workers=workers, log_level="info")


@app.command()
def worker(
    processes: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    threads: Annotated[int, typer.Option(min=1, help="Threads per process.")] = 8,
    queues: Annotated[list[str] | None, typer.Option(help="Only these queues (repeatable).")] = None,
) -> None:
    """Run Dramatiq worker processes for the job queues."""
    from dramatiq import cli as dramatiq_cli

    settings = get_settings()
    # Dramatiq reads these at import, in each worker process: set them before it starts.
    os.environ["dramatiq_worker_timeout"] = str(settings.consumer_timeout_ms)
    if settings.prefetch:
        os.environ["dramatiq_queue_prefetch"] = str(settings.prefetch)
    argv = ["worker.entry", "--processes", str(processes), "--threads", str(threads),
            "--worker-shutdown-timeout", str(int(settings.shutdown_timeout_seconds * 1000))]
    if queues:
        argv += ["--queues", *queues]
    raise typer.Exit(dramatiq_cli.main(dramatiq_cli.make_argument_parser().parse_args(argv)))


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    """Console-script entry: domain errors become one line on stderr and exit 1."""
    verbose = "-v" in sys.argv or "--verbose" in sys.argv
    try:
        app()
    except errors.JobError as exc:
        if verbose:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
