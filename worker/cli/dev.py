"""``jobctl dev`` and ``jobctl demo``: everything on the embedded defaults."""

from __future__ import annotations

from typing import Annotated

import typer

from worker import devmode
from worker.cli.common import new_console


def dev(
    port: Annotated[int, typer.Option(min=1, max=65535, metavar="PORT", help="API port.")] = 8000,
    threads: Annotated[int, typer.Option(min=1, metavar="N", help="Worker threads.")] = 4,
) -> None:
    """API and one worker together on the embedded defaults (SQLite, a private Redis); Ctrl-C stops."""
    try:
        with devmode.DevStack(port=port, threads=threads) as stack:
            console = new_console()
            console.print(f"jobrunner dev: API on {stack.api_url}  (Ctrl-C stops)")
            for line in stack.describe():
                console.print(line, markup=False, soft_wrap=True)
            stack.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, even during start-up: the children are stopped
        pass


def demo(
    rows: Annotated[int, typer.Option(min=10, metavar="N", help="Rows of the demo CSV.")] = 20_000,
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT", help="API port (0: any free one).")] = 0,
) -> None:
    """Run the whole pipeline on the embedded defaults, as a user would drive it over HTTP."""
    from worker import demo as demo_module

    raise typer.Exit(demo_module.run(rows=rows, port=port, console=new_console()))
