"""``jobctl db``: the database schema."""

from __future__ import annotations

from typing import Annotated

import typer

from jobs import migrate
from jobs.config import get_settings
from worker import devmode

app = typer.Typer(help="The database schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(revision: Annotated[str, typer.Argument(metavar="REVISION", hidden=True)] = "heads") -> None:
    """Bring the database schema up to date.

    REVISION is the Alembic revision to upgrade to (default: heads, the latest).
    """
    settings = get_settings()
    migrate.upgrade(settings.database_url, revision)
    typer.echo(f"database at {devmode.safe_url(settings.database_url)} is up to date ({revision})")
