"""Plumbing the benchmark scripts share: processes they start and stop, the bench databases, /proc.

Import it after the script has put the project root on ``sys.path``::

    from tests.benchmarks import common

Nothing here imports ``jobs`` at import time (``batch.py`` sets ``JOBRUNNER_*`` variables before
``jobs`` first reads its settings), so importing this module early is safe.

What a benchmark run touches: a redis-server of its own (unless ``JOBRUNNER_BENCH_REDIS_URL`` is
set: then the dbs it names there are flushed), and databases with names of their own on the
PostgreSQL server of ``JOBRUNNER_BENCH_PG_ADMIN_URL``; both are removed when the script exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

#: The project root: the working directory of every process the benchmarks start.
ROOT = Path(__file__).resolve().parents[2]
#: A PostgreSQL URL with the right to drop and create databases.
PG_ADMIN_URL = os.environ.get("JOBRUNNER_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


#: This run's suffix to the benchmarks' database names, so two runs at once never share one.
RUN_ID = secrets.token_hex(4)
#: The redis-server this process started for itself (see :func:`redis_url`), if any.
_private_redis = None


def redis_url(db: int) -> str:
    """``JOBRUNNER_BENCH_REDIS_URL`` if set, else db ``db`` of a redis-server this process starts for
    itself (on a free 127.0.0.1 port, as a real deployment talks TCP; stopped at exit).

    The benchmark flushes the db it uses between scenarios, so a db given by the override must be
    empty at start (then everything flushed is the benchmark's own); otherwise it refuses to run."""
    global _private_redis
    if "JOBRUNNER_BENCH_REDIS_URL" in os.environ:
        url = os.environ["JOBRUNNER_BENCH_REDIS_URL"]
        import redis

        client = redis.Redis.from_url(url)
        try:
            keys = client.dbsize()
        finally:
            client.close()
        if keys:
            raise SystemExit(
                f"JOBRUNNER_BENCH_REDIS_URL {url} holds {keys} key(s) this benchmark did not make: "
                "give it an empty db, or unset it to let the benchmark start a Redis of its own"
            )
        return url
    if _private_redis is None:
        from tests import servers  # imports no jobs module

        _private_redis = servers.PrivateRedis(tcp=True)
        atexit.register(_private_redis.close)
    return f"redis://127.0.0.1:{_private_redis.port}/{db}"


# --- databases ------------------------------------------------------------------------------------


def database_url(name: str, admin_url: str = PG_ADMIN_URL) -> str:
    """``admin_url`` pointing at this run's database ``name`` instead (``name`` with the run's
    suffix; password kept)."""
    return make_url(admin_url).set(database=f"{name}_{RUN_ID}").render_as_string(hide_password=False)


def recreate_database(name: str, admin_url: str = PG_ADMIN_URL) -> str:
    """Create this run's database ``name`` (see :func:`database_url`) empty, migrate it to the newest
    revision and return its URL. It is dropped when the script exits."""
    from jobs import migrate  # here, not at import time: see the module docstring

    url = database_url(name, admin_url)
    database = make_url(url).database
    _admin(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')  # this run's own, from an earlier call
    _admin(admin_url, f'CREATE DATABASE "{database}"')
    atexit.register(_admin, admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    migrate.upgrade(url)
    return url


def create_empty_database(name: str, admin_url: str = PG_ADMIN_URL) -> str:
    """Create this run's database ``name`` (see :func:`database_url`) empty, not migrated (for a peer
    with a schema of its own), and return its URL. It is dropped when the script exits."""
    url = database_url(name, admin_url)
    database = make_url(url).database
    _admin(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    _admin(admin_url, f'CREATE DATABASE "{database}"')
    atexit.register(_admin, admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return url


def _admin(admin_url: str, statement: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(statement))
    finally:
        admin.dispose()


# --- processes ------------------------------------------------------------------------------------

#: Processes started by :func:`spawn` and not yet stopped (for :func:`stop_all`).
_started: list[subprocess.Popen[bytes]] = []


def spawn(argv: Sequence[str], *, env: dict[str, str], log_path: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session (and process group) of its own, so that it and its children can
    be stopped together, with stdout and stderr going to ``log_path``. Remembered for :func:`stop_all`."""
    with open(log_path, "wb") as log:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], *, grace_seconds: float = 30.0, signal_group: bool = True) -> None:
    """Stop a process started by :func:`spawn`: SIGTERM, wait up to ``grace_seconds`` for it to exit,
    then SIGKILL its process group; at the end, SIGKILL whatever is left of its descendants (still in
    its group). A process that has already exited only has its leftovers killed.

    ``signal_group``: SIGTERM the whole process group (default), or only ``proc`` itself (for a
    Dramatiq parent, which passes the signal on to its worker processes: a second SIGTERM would make
    them exit at once instead of finishing their messages).
    """
    if proc in _started:
        _started.remove(proc)
    leftovers = descendants(proc.pid)  # gathered first: once the parent is gone, orphans are reparented
    if proc.poll() is None:
        try:
            if signal_group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace_seconds)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            print(f"  process {proc.pid} ignored SIGTERM for {grace_seconds:.0f} s: killing it", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for pid in leftovers:
        try:
            if os.getpgid(pid) == proc.pid:  # still in the group we started (not a reused PID)
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def stop_all(*, grace_seconds: float = 30.0, signal_group: bool = True) -> None:
    """:func:`stop` every process :func:`spawn` started that is not stopped yet."""
    for proc in list(_started):
        stop(proc, grace_seconds=grace_seconds, signal_group=signal_group)


def descendants(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children (of any of its threads), theirs, and so on, from /proc; empty
    if ``pid`` is gone. Processes that exit meanwhile are skipped."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A memory figure of ``pid`` from /proc/<pid>/status, in MiB: ``VmRSS`` (resident set size now)
    or ``VmHWM`` (its peak so far). None if the process (or the field: a zombie) is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log, indented for printing under a message."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    | " + line for line in content[-lines:])


# --- network --------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    # Imported here, not at the top: importing this module must not load the project (batch.py sets
    # its JOBRUNNER_* variables first).
    from worker import devmode

    return devmode.free_port()


def wait_for_http(
    url: str,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    timeout: float = 60.0,
    request_timeout: float = 2.0,
    interval: float = 0.2,
) -> None:
    """Poll ``url`` every ``interval`` s until it answers 200. Raises RuntimeError if ``proc`` (the
    server) exits first (with the tail of ``log_path``), TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_tail(log_path) if log_path is not None else ""
            raise RuntimeError(f"the server exited with code {proc.returncode} before {url} answered:\n{tail}")
        try:
            if httpx.get(url, timeout=request_timeout).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")
