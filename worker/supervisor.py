"""``jobctl worker``'s master: keeps N single-process Dramatiq workers running.

Dramatiq's own master stops every worker process when one of them dies (by design), so a
``kill -9`` or an OOM kill of one child takes the whole worker down. This supervisor runs each
child as its own ``python -m dramatiq worker.entry --processes 1 ...`` in a process group of its
own and starts another when one exits unexpectedly; the dead child's jobs come back through the
sweeper (lease expiry), as for any dead worker. A child dying in a loop (more than
``--restart-limit`` deaths within ``--restart-window`` seconds) stops the whole worker with a clear
message and exit code 1.

SIGTERM and SIGINT (and SIGHUP, which makes Dramatiq restart its worker) are forwarded to every
child as SIGTERM (SIGHUP as is); each then shuts down gracefully (running jobs get
``SHUTDOWN_TIMEOUT_SECONDS``, then go back to ``queued``). The exit code is 0 when every child
stopped cleanly. Children get SIGTERM if this process dies (``PR_SET_PDEATHSIG``).

Only the standard library is imported here: the master stays small.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

logger = logging.getLogger("jobrunner.supervisor")

#: How often the master looks at its children.
POLL_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in a child between fork and exec: a new process group, and SIGTERM when the parent dies."""
    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Runs ``processes`` copies of ``argv`` and replaces those that die, within a restart budget."""

    def __init__(self, argv: Sequence[str], *, processes: int, restart_limit: int, restart_window: float) -> None:
        self.argv = list(argv)
        self.processes = processes
        self.restart_limit = restart_limit
        self.restart_window = restart_window
        self.children: list[subprocess.Popen[bytes]] = []
        self.deaths: collections.deque[float] = collections.deque()
        self.pending: list[int] = []  # signals received, forwarded by the loop
        self.stopping = False
        self.failed = False

    def _on_signal(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    def run(self) -> int:
        """Start the children, keep their count until told to stop; return the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        for _ in range(self.processes):
            self._spawn()
        while self.children:
            self._forward_signals()
            for child in [c for c in self.children if c.poll() is not None]:
                self.children.remove(child)
                self._reap(child)
            time.sleep(POLL_SECONDS)
        self._forward_signals()  # nothing left to forward to; just drop them
        return 1 if self.failed else 0

    def _spawn(self) -> None:
        child = subprocess.Popen(self.argv, preexec_fn=die_with_parent)
        self.children.append(child)
        logger.info("worker child %d started (%d of %d)", child.pid, len(self.children), self.processes)

    def _forward_signals(self) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            if signum != signal.SIGHUP:
                if not self.stopping:
                    logger.info("%s: stopping %d worker children", signal.Signals(signum).name, len(self.children))
                self.stopping = True
                signum = signal.SIGTERM
            self._signal_children(signum)

    def _signal_children(self, signum: int) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def _reap(self, child: subprocess.Popen[bytes]) -> None:
        # Whatever the child left in its group (a Dramatiq worker process whose master was killed)
        # must not run on beside its replacement.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        code = child.returncode
        if self.stopping:
            if code != 0:
                logger.warning("worker child %d exited with code %s while stopping", child.pid, code)
                self.failed = True
            return
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - self.restart_window:
            self.deaths.popleft()
        if len(self.deaths) > self.restart_limit:
            logger.error(
                "worker children died %d times within %g s (the limit is %d): stopping the worker; "
                "see the log above for why they died",
                len(self.deaths),
                self.restart_window,
                self.restart_limit,
            )
            self.failed = self.stopping = True
            self._signal_children(signal.SIGTERM)
            return
        logger.warning("worker child %d exited with code %s: starting another", child.pid, code)
        self._spawn()


def main(args: Sequence[str] | None = None) -> int:
    """``python -m worker.supervisor --processes N [--restart-limit K --restart-window M] -- CHILD-ARGV``."""
    parser = argparse.ArgumentParser(prog="jobctl worker (supervisor)")
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--restart-limit", type=int, default=5)
    parser.add_argument("--restart-window", type=float, default=60.0)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    options = parser.parse_args(args)
    argv = options.argv[1:] if options.argv[:1] == ["--"] else options.argv
    if not argv:
        parser.error("no child command given")
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s] [PID %(process)d] [%(name)s] [%(levelname)s] %(message)s",
        stream=sys.stderr,
    )
    supervisor = Supervisor(
        argv,
        processes=options.processes,
        restart_limit=options.restart_limit,
        restart_window=options.restart_window,
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
