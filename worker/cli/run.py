"""``jobctl api`` and ``jobctl worker``: run the processes (each replaces this one with its own CLI)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from jobs.config import get_settings
from worker import devmode


def api(
    host: Annotated[str, typer.Option(metavar="HOST", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, metavar="PORT", help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, metavar="N", help="uvicorn worker processes.")] = 1,
) -> None:
    """Run the HTTP API (uvicorn)."""
    get_settings()  # refuse bad settings before uvicorn starts
    # Replace this process with uvicorn's own CLI: the API then carries none of the CLI's imports
    # (Typer, Rich, the worker), about 14 MB less resident memory.
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "info",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def worker(
    processes: Annotated[int, typer.Option(min=1, metavar="N", help="Worker processes (a dead one is replaced).")] = 1,
    threads: Annotated[int, typer.Option(min=1, metavar="N", help="Threads per process.")] = 8,
    queues: Annotated[list[str] | None, typer.Option(metavar="QUEUE", help="Only these queues (repeatable).")] = None,
    restart_limit: Annotated[
        int, typer.Option(min=0, metavar="N", help="Stop the worker when its processes die more often than this...")
    ] = 5,
    restart_window: Annotated[
        float, typer.Option(min=1, metavar="SECONDS", help="...within this many seconds.")
    ] = 60.0,
) -> None:
    """Run the job queues' worker processes (Dramatiq workers under a supervisor that replaces dead ones)."""
    settings = get_settings()
    # Dramatiq reads these once, when dramatiq.worker is first imported, and this process has
    # imported it already: the children are fresh interpreters with them in their environment.
    env = dict(os.environ, dramatiq_worker_timeout=str(settings.consumer_timeout_ms))
    if settings.prefetch:
        env["dramatiq_queue_prefetch"] = str(settings.prefetch)
    # Dramatiq's own shutdown wait must outlast ours, so interrupted jobs are recorded before exit.
    shutdown_ms = int((settings.shutdown_timeout_seconds + devmode.SHUTDOWN_GRACE_SECONDS) * 1000)
    child = [
        sys.executable,
        "-m",
        "dramatiq",
        "worker.entry",
        "--processes",
        "1",
        "--threads",
        str(threads),
        "--worker-shutdown-timeout",
        str(shutdown_ms),
    ]
    if queues:
        child += ["--queues", *queues]
    # Replace this process with the supervisor (same PID, so signals sent to `jobctl worker` reach
    # it; it imports only the standard library). Dramatiq's own master would stop every child when
    # one dies; the supervisor runs one single-process Dramatiq per child and replaces dead ones.
    argv = [
        sys.executable,
        "-m",
        "worker.supervisor",
        "--processes",
        str(processes),
        "--restart-limit",
        str(restart_limit),
        "--restart-window",
        str(restart_window),
        "--",
        *child,
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
