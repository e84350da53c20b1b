"""``jobctl``: run the processes, migrate the database, inspect, sweep, prune and replay jobs.

One module per command group: ``run`` (api, worker), ``dev`` (dev, demo), ``db``, ``jobs`` (jobs,
stats, sweep, prune), ``events``, ``replay``, ``check``, ``control`` (cancel, queues), ``schedules``;
``common`` holds what they share.

Exit codes: 0 success, 1 an operation failed or only partly went through, 2 bad usage (Click's
own code for a bad option, and ours for a missing selector or a bad setting). Errors are one line
on stderr; ``-v`` shows the traceback. ``jobctl`` (or a group such as ``jobctl jobs``) without a
command prints its help on stderr and exits 2, as Click does.

Help is Click's plain layout (``rich_markup_mode=None``): Typer's Rich panels give every parameter
a type column (``<bool>`` for a flag, ``<list[str]>``), which the plain layout leaves out for flags.
So each option that takes a value names it with a ``metavar`` (``--since WHEN``), and arguments
(whose type Typer always prints) are hidden from the option list and described in the command's
help instead; the usage line still shows them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, NoReturn

import click
import pydantic
import typer
from sqlalchemy import exc as sa_exc

from jobs import errors
from jobs.observe import logs
from worker.cli import check, control, db, dev, events, jobs, replay, run, schedules
from worker.cli.common import USAGE_ERROR, UsageError

app = typer.Typer(
    help="jobrunner: background jobs with one database session per job.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    # Click wraps help at 80 columns by default, cutting command summaries short; a wider terminal
    # gets them whole.
    context_settings={"max_content_width": 120},
)
app.add_typer(db.app, name="db")
app.add_typer(jobs.app, name="jobs")
app.add_typer(events.app, name="events")
app.add_typer(control.app, name="queues")
app.add_typer(schedules.app, name="schedules")
for command in (run.api, run.worker, dev.dev, dev.demo, jobs.stats, jobs.sweep, jobs.prune, replay.replay):
    app.command()(command)
app.command()(check.check)
app.command()(control.cancel)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Read here without the other settings: a bad one is reported by the command that needs it.
    logs.configure_logging(os.environ.get("JOBRUNNER_LOG_FORMAT", "text"))


def main() -> None:
    """Console-script entry: errors become one line on stderr (the traceback only with ``-v``)."""
    verbose = any(arg in ("-v", "--verbose") for arg in sys.argv[1:])
    try:
        # standalone_mode=False: Click returns the exit code and raises its errors to us. The
        # program is jobctl, also when run as `python -m worker`.
        code = app(standalone_mode=False, prog_name="jobctl")
    except (UsageError, pydantic.ValidationError) as exc:
        _fail(exc, USAGE_ERROR, verbose)
    except errors.JobError as exc:
        _fail(exc, 1, verbose)
    except sa_exc.DBAPIError as exc:
        if _is_missing_schema(exc):
            _fail(RuntimeError("the database has no jobrunner tables yet: run `jobctl db upgrade` first"), 1, verbose)
        _fail(exc, 1, verbose)
    except typer.Abort:
        _fail(RuntimeError("aborted"), 1, verbose)
    except (typer.TyperException, click.ClickException) as exc:
        # Click's own errors (a bad option is usage: 2). Recent Typer raises them from its own
        # copy of Click, which click.ClickException does not match (hence the class name below).
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group without a command: its help
            print(exc.format_message(), file=sys.stderr)
            sys.exit(exc.exit_code)
        _fail(exc, exc.exit_code, verbose)
    except Exception as exc:  # the CLI's edge: one line, not a traceback
        _fail(exc, 1, verbose)
    sys.exit(code if isinstance(code, int) else 0)


def _is_missing_schema(exc: sa_exc.DBAPIError) -> bool:
    message = str(exc.orig)
    return "no such table" in message or ("relation" in message and "does not exist" in message)


def _fail(exc: BaseException, code: int, verbose: bool) -> NoReturn:
    if verbose:
        import traceback

        traceback.print_exception(exc)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, pydantic.ValidationError):
        message = "bad setting: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {_pydantic_message(e['type'], e['msg'])}" for e in exc.errors()
        )
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _pydantic_message(error_type: str, message: str) -> str:
    """Pydantic's message without the "Value error, " it puts before a validator's own words."""
    return message.removeprefix("Value error, ") if error_type == "value_error" else message
