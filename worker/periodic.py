"""A daemon thread that runs one action every so often (the heartbeat, the sweeper)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import exc as sa_exc

logger = logging.getLogger(__name__)


class Periodic:
    """Runs ``action`` every ``interval_seconds`` until stopped; a database error is logged and the
    action tried again next time (the database may be restarting)."""

    def __init__(self, name: str, interval_seconds: float, action: Callable[[], object]) -> None:
        self.name = name
        self.interval_seconds = interval_seconds
        self.action = action
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"jobrunner-{name}", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current run of the action, and wait for the thread."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_seconds):
            try:
                self.action()
            except sa_exc.SQLAlchemyError as exc:
                logger.warning("%s failed (will try again): %s", self.name, exc)
