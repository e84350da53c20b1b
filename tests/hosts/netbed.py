"""A multi-host test bed on one machine: network namespaces joined by veth pairs to a bridge.

One namespace per "host": ``db`` (a PostgreSQL of the bed's own), ``broker`` (a redis-server of its
own, and, started when first asked for, :attr:`Netbed.rabbitmq`, a RabbitMQ node of its own),
``api`` and two workers (``w1``, ``w2``); the bridge lives in a namespace of its own (``hub``).
Addresses are in a private /24 (10.213.x.0/24, x random) that exists only inside those namespaces:
nothing is added to the machine's own network. The test itself reaches PostgreSQL and Redis through
their unix sockets (files, not network), so it sees the truth whatever the partition. AMQP has no
unix socket: the test reaches the RabbitMQ node from a thread of its own that entered the
``broker`` namespace (:class:`NamespaceThread`; a socket stays in the namespace it was opened in),
so over the broker host's own address, which no partition of the bed cuts.

Faults, from inside a host's namespace, with iproute2 only (neither iptables nor nft is needed):
- :meth:`Netbed.partition` adds ``blackhole`` routes both ways between two hosts (packets are
  dropped, connections stay open and resume when healed, as across a real partition);
  :meth:`Netbed.heal` removes them.
Everything is removed by :meth:`Netbed.close` (the namespaces and so their veths and routes, the
servers, every process started in them), also at interpreter exit.

As a script (root needed)::

    .venv/bin/python -m tests.hosts.netbed      # build the bed, print its hosts, tear it down
    .venv/bin/python -m tests.hosts.netbed --rabbitmq   # the same, with its RabbitMQ node started
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tests import rabbitmq, servers

#: The hosts of the bed and their last address byte.
HOSTS = {"db": 2, "broker": 3, "api": 4, "w1": 11, "w2": 12}
#: The private range: 10.213.<random>.0/24.
PREFIX = "10.213"
REDIS_PORT = 6379
PG_PORT = 5432
RABBITMQ_PORT = 5672
#: ``setns``'s flag for a network namespace (linux/sched.h).
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class NetbedUnavailable(RuntimeError):
    """Network namespaces cannot be created here (not root, no ``ip``, or no permission)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def probe() -> None:
    """Raise :class:`NetbedUnavailable` unless a network namespace can be created (and removed)."""
    if shutil.which("ip") is None:
        raise NetbedUnavailable("the `ip` command (iproute2) is not installed")
    if os.geteuid() != 0:
        raise NetbedUnavailable("creating network namespaces needs root")
    name = f"jrprobe{secrets.token_hex(3)}"
    result = _ip("netns", "add", name, check=False)
    if result.returncode != 0:
        raise NetbedUnavailable(f"`ip netns add` failed: {result.stderr.strip()}")
    _ip("netns", "del", name, check=False)


class Netbed:
    """The namespaces, links and servers of one bed; see the module doc."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(2)
        self.subnet = f"{PREFIX}.{secrets.randbelow(250) + 1}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.partitions: set[tuple[str, str]] = set()
        self.postgres: NetbedPostgres | None = None
        self.redis: subprocess.Popen[bytes] | None = None
        self._rabbitmq: NetbedRabbit | None = None
        self._threads: list[NamespaceThread] = []
        self.dir = Path(tempfile.mkdtemp(prefix="jobrunner-netbed-"))
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # --- building -------------------------------------------------------------------------------

    def ns(self, host: str) -> str:
        """The namespace name of ``host``."""
        return f"jr{self.id}-{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{HOSTS[host]}"

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        hub = self.ns("hub")
        self._add_namespace(hub)
        bridge = f"jr{self.id}br"
        _ip("-n", hub, "link", "add", bridge, "type", "bridge")
        _ip("-n", hub, "link", "set", bridge, "up")
        for host in HOSTS:
            name = self.ns(host)
            self._add_namespace(name)
            inside, outside = f"jr{self.id}{host}a", f"jr{self.id}{host}b"
            # Made inside the host's namespace, so nothing ever appears in the machine's own.
            _ip("-n", name, "link", "add", inside, "type", "veth", "peer", "name", outside, "netns", hub)
            _ip("-n", name, "addr", "add", f"{self.address(host)}/24", "dev", inside)
            _ip("-n", name, "link", "set", inside, "up")
            _ip("-n", hub, "link", "set", outside, "master", bridge)
            _ip("-n", hub, "link", "set", outside, "up")
        self.postgres = NetbedPostgres(self)
        self._start_redis()

    def _start_redis(self) -> None:
        socket_path = self.dir / "redis.sock"
        log = self.dir / "redis.log"
        self.redis = self.spawn(
            "broker",
            [
                servers.redis_server_executable(),
                "--bind",
                self.address("broker"),
                "--port",
                str(REDIS_PORT),
                "--unixsocket",
                str(socket_path),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(log),
            ],
            log=None,
        )
        deadline = time.monotonic() + servers.START_TIMEOUT_SECONDS
        while not socket_path.exists():
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bed's redis-server did not start:\n{servers._tail(log)}")
            time.sleep(0.05)

    # --- what tests use -------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        """Redis as the hosts reach it, over the bridge."""
        return f"redis://{self.address('broker')}:{REDIS_PORT}/0"

    @property
    def rabbitmq(self) -> NetbedRabbit:
        """The bed's RabbitMQ node, in the ``broker`` namespace (started on first use: it takes
        seconds; removed with the bed)."""
        if self._rabbitmq is None:
            self._rabbitmq = NetbedRabbit(self)
        return self._rabbitmq

    def thread(self, host: str) -> NamespaceThread:
        """A thread of the test's own in ``host``'s network namespace (stopped at :meth:`close`)."""
        thread = NamespaceThread(self.ns(host))
        self._threads.append(thread)
        return thread

    @property
    def local_redis_url(self) -> str:
        """Redis as the test reaches it: its unix socket."""
        return f"unix://{self.dir / 'redis.sock'}?db=0"

    def spawn(
        self, host: str, argv: list[str], *, log: Path | None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s namespace (its own process group; killed at :meth:`close`)."""
        output = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115  # closed below
        try:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log is not None:
                output.close()  # type: ignore[union-attr]
        self.processes.append(process)
        return process

    def partition(self, a: str, b: str) -> None:
        """Drop every packet between hosts ``a`` and ``b`` (both ways) until :meth:`heal`."""
        for here, there in ((a, b), (b, a)):
            _ip("-n", self.ns(here), "route", "add", "blackhole", f"{self.address(there)}/32")
        self.partitions.add((a, b))

    def heal(self, a: str, b: str) -> None:
        """Undo :meth:`partition`."""
        for here, there in ((a, b), (b, a)):
            _ip("-n", self.ns(here), "route", "del", "blackhole", f"{self.address(there)}/32", check=False)
        self.partitions.discard((a, b))

    def close(self) -> None:
        """Kill every process started in the bed, stop its servers, delete its namespaces."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes.clear()
        for thread in self._threads:
            thread.close()
        self._threads.clear()
        # The RabbitMQ node (and its epmd) runs detached in the broker's namespace: killed with it below.
        self._rabbitmq = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
        for name in reversed(self.namespaces):
            # Anything still running inside (a worker's grandchild, a RabbitMQ node, its epmd) goes
            # first; looked for again until none is left (one may have forked meanwhile).
            for _ in range(50):
                pids = _ip("netns", "pids", name, check=False).stdout.split()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.05)
            _ip("netns", "del", name, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class NetbedPostgres(servers.ThrowawayPostgres):
    """The bed's PostgreSQL: a throwaway server whose postmaster runs in the ``db`` namespace and
    listens on that host's address (and on its unix socket, for the test)."""

    def __init__(self, bed: Netbed) -> None:
        self.bed = bed
        super().__init__()

    def _start(self) -> None:
        conf = self.data / "postgresql.conf"
        text = conf.read_text()
        listen = f"\nlisten_addresses = '{self.bed.address('db')}'\n"
        if listen not in text:
            conf.write_text(text + listen + "max_connections = 200\n")
            hba = self.data / "pg_hba.conf"
            hba.write_text(hba.read_text() + f"host all all {self.bed.subnet}.0/24 trust\n")
        owner = self._as_user
        drop = ["setpriv", f"--reuid={owner['user']}", f"--regid={owner['group']}", "--clear-groups"] if owner else []
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.bed.ns("db"), *drop, str(self.bindir / "postgres"), "-D", str(self.data)],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=servers._quit_with_parent,
            )
        servers._wait(
            self._ready,
            alive=lambda: self.process is not None and self.process.poll() is None,
            what="the bed's PostgreSQL",
            log=self.log,
        )

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(host=str(self.dir), port=self.port, user="postgres", dbname="postgres"):
                return True
        except psycopg.OperationalError:
            return False

    @property
    def url(self) -> str:
        """The database as the test reaches it: its unix socket."""
        return f"postgresql+psycopg://postgres@/postgres?host={self.dir}&port={self.port}"

    @property
    def host_url(self) -> str:
        """The database as the hosts reach it, over the bridge."""
        return f"postgresql+psycopg://postgres@{self.bed.address('db')}:{self.port}/postgres"


class NamespaceThread:
    """One thread (of the test's process) that entered the network namespace ``ns`` (``setns``: only
    that thread's namespace changes). :meth:`run` runs a call there: the sockets it opens belong to
    that namespace for good (a client's connection made there keeps working from it)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{ns}", initializer=self._enter)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns into {self.ns}: {os.strerror(errno)}")
        finally:
            os.close(fd)

    def run(self, action: Callable[[], T]) -> T:
        """``action()``, called in the namespace; its result (or its exception)."""
        return self._executor.submit(action).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class NetbedRabbit(rabbitmq.ThrowawayRabbit):
    """The bed's RabbitMQ: a throwaway node (tests/rabbitmq.py) whose ``rabbitmq-server`` and
    ``rabbitmqctl`` run in the ``broker`` namespace (so do its epmd and the CLI's distribution
    connection: epmd is per network namespace), listening on that host's address, data and logs in
    the bed's dir. Its own ``rabbitmq.conf`` lets ``guest`` in from any address of the bed
    (``loopback_users = none``); the test reaches it from the bed's thread in that namespace."""

    def __init__(self, bed: Netbed) -> None:
        self.bed = bed
        self.thread = bed.thread("broker")
        bed.dir.chmod(0o711)  # the rabbitmq user goes through to its own dir
        super().__init__(
            dir=bed.dir / "rabbitmq",
            bind=bed.address("broker"),
            port=RABBITMQ_PORT,
            command_prefix=["ip", "netns", "exec", bed.ns("broker")],
            config="loopback_users = none\n",
            node_prefix=f"jobrunner_netbed{bed.id}",
        )

    def in_reach(self, action: Callable[[], T]) -> T:
        return self.thread.run(action)


def main() -> int:
    try:
        probe()
    except NetbedUnavailable as exc:
        print(f"no test bed: {exc}", file=sys.stderr)
        return 1
    bed = Netbed()
    try:
        print(f"namespaces: {', '.join(bed.namespaces)}")
        for host in HOSTS:
            print(f"  {host:7} {bed.address(host)}")
        print(f"database (hosts): {bed.postgres.host_url if bed.postgres else '-'}")
        print(f"broker (hosts):   {bed.redis_url}")
        if "--rabbitmq" in sys.argv[1:]:
            print(f"RabbitMQ (hosts): {bed.rabbitmq.url} (node {bed.rabbitmq.node})")
    finally:
        bed.close()
    print("torn down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
