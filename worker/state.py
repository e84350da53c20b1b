"""What the worker's two middlewares share within one worker process."""

from __future__ import annotations

import dataclasses
import os
import socket

from jobs import db
from jobs.config import Settings
from jobs.registry import Registry
from worker.heartbeat import Heartbeat
from worker.stopping import Stopper


def worker_id() -> str:
    """This process's name in ``jobs.worker_id``: host and PID."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclasses.dataclass
class WorkerState:
    """The settings, kinds and database of one worker process, and the jobs its threads run.

    :class:`worker.lifecycle.WorkerLifecycle` fills in ``database`` at worker boot (an engine is never
    inherited across a fork) unless one is given, and runs the heartbeat; the session middleware
    (:class:`worker.middleware.JobSessionMiddleware`) uses them for each message.
    """

    settings: Settings
    registry: Registry
    database: db.Database | None = None
    #: The asyncio engine and sessions of the async kinds' jobs (built at boot when there are any).
    async_database: db.AsyncDatabase | None = None
    heartbeat: Heartbeat = dataclasses.field(init=False)
    stopper: Stopper = dataclasses.field(default_factory=Stopper)
    worker_id: str = dataclasses.field(default_factory=worker_id)

    def __post_init__(self) -> None:
        self.heartbeat = Heartbeat(lease_seconds=self.settings.lease_seconds)

    def require_database(self) -> db.Database:
        """The process's database.

        Raises:
            RuntimeError: the worker has not booted (no database yet).
        """
        if self.database is None:
            raise RuntimeError("the worker has not booted: no database yet")
        return self.database

    def require_async_database(self) -> db.AsyncDatabase:
        """The process's asyncio database (for async handlers).

        Raises:
            RuntimeError: the worker has not booted, or its registry has no async kind.
        """
        if self.async_database is None:
            raise RuntimeError("no asyncio database: the worker has not booted, or it runs no async kind")
        return self.async_database
