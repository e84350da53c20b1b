"""The scheduler: a thread in every worker process that fires the due schedules (no extra process
to forget). Every worker runs one; the database decides which of them fires each time
(:func:`jobs.scheduling.service.fire_due`).

It sleeps until the earliest next fire time, or ``schedule_poll_seconds`` at most (to notice
schedules added, paused or resumed meanwhile); at boot it upserts the schedules declared in code.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy import exc as sa_exc

from jobs import db, sending, store
from jobs.config import Settings
from jobs.registry import Registry
from jobs.scheduling import service

logger = logging.getLogger(__name__)


class Scheduler:
    """Fires the due schedules of ``database`` until stopped; a database error is logged and tried
    again at the next poll (the database may be restarting)."""

    def __init__(self, settings: Settings, registry: Registry, sender: sending.Sender) -> None:
        # A pool of its own (one connection): the worker's pool is sized to its job threads plus
        # the heartbeat and the sweeper, and the scheduler, looking every second, must not take
        # a connection a job is waiting for.
        self.database = db.make_database(
            settings.database_url,
            pool_size=1,
            sender=sender,
            registry=registry,
            application_name="jobrunner-scheduler",
        )
        self.poll_seconds = settings.schedule_poll_seconds
        self.registry = registry
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobrunner-scheduler", daemon=True)

    def start(self) -> None:
        """Start the thread; its first turn upserts the schedules declared in code."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current turn and wait for the thread."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        self.database.dispose()

    def _run(self) -> None:
        declared = False
        while not self._stopped.is_set():
            wait = self.poll_seconds
            try:
                if not declared:
                    with db.session_scope(self.database.sessions) as session:
                        service.upsert_declared(session, self.registry.schedules())
                    declared = True
                wait = self.turn()
            except sa_exc.SQLAlchemyError as exc:
                logger.warning("scheduler failed (will try again): %s", exc)
            self._stopped.wait(wait)

    def turn(self) -> float:
        """Fire what is due; return how long to sleep before the next turn."""
        due_at = self._next_due()
        if due_at is not None and due_at <= store.utcnow():
            with db.session_scope(self.database.sessions) as session:
                service.fire_due(session)
            due_at = self._next_due()
            if due_at is not None and due_at <= store.utcnow():
                return self.poll_seconds  # another worker is firing it (or it cannot fire): look later
        if due_at is None:
            return self.poll_seconds
        return max(0.0, min(self.poll_seconds, (due_at - store.utcnow()).total_seconds()))

    def _next_due(self) -> dt.datetime | None:
        with self.database.readers() as session:
            return service.next_due_at(session)
