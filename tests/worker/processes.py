"""Real worker processes for the tests about crashes, restarts and shutdowns."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from jobs import db, models, store

#: Short leases and sweeps, so recovery happens within seconds in the tests. A message that a
#: killed worker process had fetched stays in Redis (in that consumer's unacknowledged set) until
#: Dramatiq's Redis broker gives it back, 60 s after the consumer's last heartbeat; the sweeper
#: re-sends it once its job has waited RESEND_HELD_AFTER (a backlog a worker drains meanwhile is not
#: sent twice), so recovery does not wait on Dramatiq.
FAST_RECOVERY = {
    "JOBRUNNER_LEASE_SECONDS": "2",
    "JOBRUNNER_SWEEP_INTERVAL_SECONDS": "0.5",
    "JOBRUNNER_REQUEUE_AFTER_SECONDS": "2",
    "JOBRUNNER_RESEND_HELD_AFTER_SECONDS": "10",
    "JOBRUNNER_RETRY_BACKOFF_SECONDS": "0.05",
}
#: Longest any test waits for jobs to settle.
SETTLE_SECONDS = 120.0


def job_statuses(database: db.Database, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The status of each of ``job_ids`` that exists, by ID."""
    with database.readers() as session:
        rows = session.execute(select(models.Job.id, models.Job.status).where(models.Job.id.in_(job_ids))).all()
    return {job_id: status for job_id, status in rows}


def count_status(database: db.Database, job_ids: Sequence[uuid.UUID], status: str) -> int:
    """How many of ``job_ids`` are ``status`` now."""
    return list(job_statuses(database, job_ids).values()).count(status)


def database_reachable(database: db.Database) -> bool:
    """Whether a new connection to ``database`` answers a query now."""
    try:
        with database.engine.connect() as conn:
            conn.execute(select(1))
        return True
    except Exception:
        return False


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


def _each_process(name: str) -> Iterator[tuple[int, bytes]]:
    """Every process's PID and its ``/proc/PID/<name>`` file (those gone meanwhile left out)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                yield int(entry.name), Path(entry.path, name).read_bytes()
            except OSError:
                continue


def _parents() -> dict[int, tuple[int, int]]:
    """Every process's (parent PID, process group), from /proc."""
    found = {}
    for pid, stat in _each_process("stat"):
        fields = stat[stat.rindex(b")") + 2 :].split()
        found[pid] = (int(fields[1]), int(fields[2]))
    return found


def children_of(pid: int, parents: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """The PIDs whose parent is ``pid``."""
    parents = _parents() if parents is None else parents
    return sorted(child for child, (ppid, _) in parents.items() if ppid == pid)


#: The environment variable through which every process a :class:`WorkerProcess` starts, however
#: far down its tree and whatever process group or session it moved to, can be found (its value is
#: the instance's :attr:`WorkerProcess.mark`): the fixtures kill them all after the test.
MARK_VARIABLE = "JOBRUNNER_TEST_PROCESS_MARK"


def marked_processes(mark: str) -> list[int]:
    """The PIDs of the processes whose environment carries ``MARK_VARIABLE=mark``."""
    needle = f"{MARK_VARIABLE}={mark}".encode()
    return sorted(pid for pid, environ in _each_process("environ") if needle in environ.split(b"\0"))


def _is_dramatiq_master(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[1:3] == [b"-m", b"dramatiq"]


class WorkerProcess:
    """``jobctl worker``: its supervisor (in a process group of its own), and for each worker
    process a Dramatiq master and its worker process (in a group of their own)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        threads: int = 4,
        processes: int = 1,
        args: Sequence[str] = (),
        name: str = "worker",
        command_prefix: Sequence[str] = (),
        **env: str,
    ) -> None:
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self.mark = uuid.uuid4().hex
        child_env = {**os.environ, **FAST_RECOVERY, **env, MARK_VARIABLE: self.mark}
        argv = ["--processes", str(processes), "--threads", str(threads), *args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*command_prefix, sys.executable, "-m", "worker", "worker", *argv],
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The supervisor's PID (also its process group's)."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the supervisor still runs."""
        return self.process.poll() is None

    def children(self) -> list[int]:
        """The supervisor's children: one Dramatiq master per worker process (each a group leader)."""
        return children_of(self.pid)

    def worker_pids(self) -> list[int]:
        """The Dramatiq worker processes (those running the jobs): the processes of the tree whose
        parent is a Dramatiq master (the children's children, under the supervisor)."""
        parents = _parents()
        found, level = [], [self.pid]
        while level:
            masters = [pid for pid in level if _is_dramatiq_master(pid)]
            found += [child for master in masters for child in children_of(master, parents)]
            level = [child for pid in level for child in children_of(pid, parents)]
        return sorted(set(found))

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every process of the worker (each child's group, then the supervisor's)."""
        for group in [*self.children(), self.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signum)

    def kill(self) -> None:
        """kill -9 every process of the worker."""
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.kill_strays()

    def clean_up(self) -> None:
        """After the test: kill -9 the worker if it still runs; if it stopped (or its supervisor
        was killed), whatever it started that still runs."""
        if self.alive():
            self.kill()
        else:
            self.kill_strays()

    def kill_strays(self) -> list[int]:
        """kill -9 every process this worker started that still runs, wherever it is now (an orphan
        no longer under the supervisor, in a group or session of its own); their PIDs."""
        strays = marked_processes(self.mark)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return strays

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


def create_notes(database: db.Database, count: int, **args: Any) -> list[uuid.UUID]:
    """Create and commit ``count`` ``test.note`` jobs (texts "0", "1", ...) with ``args``; their IDs."""
    with db.session_scope(database.sessions) as session:
        return [store.create_job(session, "test.note", {"text": str(n), **args}).id for n in range(count)]
