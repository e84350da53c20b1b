"""``jobctl events``: domain events and their projections."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobs import db
from jobs.config import get_settings
from jobs.kinds.events import projections
from worker.cli.common import DRY_RUN_NOTE, JsonOption, open_database

app = typer.Typer(help="Domain events and their projections.", no_args_is_help=True)


@app.command("rebuild")
def rebuild(
    projection: Annotated[str, typer.Argument(metavar="PROJECTION", hidden=True)],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only compare with the live rows; change nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Recompute a projection from its initial rows and the ledger of applied events.

    PROJECTION is orgs or products.
    """
    with open_database(get_settings()) as database, db.session_scope(database.sessions) as session:
        report = projections.rebuild_projection(session, projection, dry_run=dry_run)
    summary = {
        "projection": report.projection,
        "rows": report.rows,
        "matched": report.matched,
        "dry_run": dry_run,
        "changed": [str(k) for k in report.changed],
        "missing": [str(k) for k in report.missing],
        "extra": [str(k) for k in report.extra],
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    if report.matched:
        typer.echo(f"{projection}: {report.rows} rows recomputed; live equals rebuilt")
    else:
        typer.echo(
            f"{projection}: {report.rows} rows; {'would fix' if dry_run else 'fixed'} {len(report.changed)} "
            f"changed, {len(report.missing)} missing, {len(report.extra)} extra"
        )
    if dry_run:
        typer.echo(DRY_RUN_NOTE)
