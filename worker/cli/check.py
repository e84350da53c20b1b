"""``jobctl check``: verify the database's invariants (see :mod:`jobs.store.checking`).

Exit codes: 0 when every invariant holds (one line saying so), 1 naming each violation.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from jobs import kinds
from jobs.config import get_settings
from jobs.store import checking
from worker.cli.common import JsonOption, open_database


def check(
    limit: Annotated[
        int, typer.Option(min=1, max=1_000_000, metavar="N", help="List at most this many violations of each check.")
    ] = checking.DEFAULT_LIMIT,
    as_json: JsonOption = False,
) -> None:
    """Verify the database's invariants; exit 1 naming each violation."""
    settings = get_settings()
    checks = checking.checks_of(kinds.load_registry(settings))
    with open_database(settings) as database, database.readers() as session:
        report = checking.run_checks(session, checks, limit=limit)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "checks": report.checks,
                    "violations": [
                        {"invariant": v.invariant, "subject": v.subject, "detail": v.detail} for v in report.violations
                    ],
                    "truncated": report.truncated,
                }
            )
        )
    elif report.ok:
        typer.echo(f"OK: every invariant holds ({len(report.checks)} checks)")
    else:
        for violation in report.violations:
            typer.echo(str(violation))
        for name in report.truncated:
            typer.echo(f"{name}: stopped at {limit} violations; there may be more (--limit)")
        typer.echo(f"{len(report.violations)} violation(s) found by {len(report.checks)} checks")
    if not report.ok:
        raise typer.Exit(1)
