"""Real worker processes for the tests about crashes, restarts and shutdowns."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Short leases and sweeps, so recovery happens within seconds in the tests.
FAST_RECOVERY = {
    "JOBRUNNER_LEASE_SECONDS": "2",
    "JOBRUNNER_SWEEP_INTERVAL_SECONDS": "0.5",
    "JOBRUNNER_REQUEUE_AFTER_SECONDS": "2",
    "JOBRUNNER_RETRY_BACKOFF_SECONDS": "0.05",
}
#: Longest any test waits for jobs to settle.
SETTLE_SECONDS = 120.0


def wait_until(predicate: Callable[[], Any], *, timeout: float = SETTLE_SECONDS, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


class WorkerProcess:
    """``jobctl worker`` (Dramatiq's master and its worker process) in a process group of its own."""

    def __init__(self, log_dir: Path, *, threads: int = 4, name: str = "worker", **env: str) -> None:
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        child_env = {**os.environ, **FAST_RECOVERY, **env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker", "--processes", "1", "--threads", str(threads)],
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The master's PID (also the process group's)."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the master still runs."""
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the whole group (master and worker processes)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """kill -9 every process of the worker."""
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the master (as an operator would) and wait for it to exit."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def log(self) -> str:
        """What the worker printed."""
        return self.log_path.read_text(errors="replace")
