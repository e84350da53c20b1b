"""What a test run owns on RabbitMQ: a vhost of its own on the machine's node, and a throwaway node
of its own for the test that stops and restarts one.

The machine's node (``JOBRUNNER_TEST_RABBITMQ_URL``, default ``amqp://guest:guest@127.0.0.1:5672``)
is managed with ``rabbitmqctl`` (the node named by ``JOBRUNNER_TEST_RABBITMQ_NODE``, default the
CLI's); nothing here stops, resets or purges anything of it but the vhost the run made, which is
deleted at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pika.exceptions

from tests import servers

#: The machine's RabbitMQ (a vhost of the run's own is made there).
NODE_URL = os.environ.get("JOBRUNNER_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
#: The node name ``rabbitmqctl`` talks to for it (empty: the CLI's default, the local node).
NODE_NAME = os.environ.get("JOBRUNNER_TEST_RABBITMQ_NODE", "")
#: How long ``rabbitmqctl`` gets per command.
CTL_TIMEOUT_SECONDS = 60

T = TypeVar("T")


def rabbitmqctl(
    *args: str, node: str = NODE_NAME, env: dict[str, str] | None = None, command_prefix: Sequence[str] = ()
) -> str:
    """Run ``rabbitmqctl`` (against ``node``; after ``command_prefix``, e.g. ``ip netns exec NS``);
    its output. Raises ``RuntimeError`` on failure."""
    argv = [*command_prefix, "rabbitmqctl", *(["-n", node] if node else []), "-q", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=CTL_TIMEOUT_SECONDS, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr or result.stdout}")
    return result.stdout


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"


def _with_vhost(url: str, vhost: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(vhost, safe="")))


class RabbitVhost:
    """A vhost of the run's own (``jobrunner_test_<random hex>``) on the machine's node, open to the
    URL's user; :meth:`flush` purges queues (every message lost), :meth:`close` deletes it."""

    def __init__(self, node_url: str = NODE_URL, *, node: str = NODE_NAME, prefix: str = "jobrunner_test") -> None:
        self.node = node
        self.name = f"{prefix}_{secrets.token_hex(6)}"
        user = urlsplit(node_url).username or "guest"
        rabbitmqctl("add_vhost", self.name, node=node)
        try:
            rabbitmqctl("set_permissions", "-p", self.name, user, ".*", ".*", ".*", node=node)
            self.url = _with_vhost(node_url, self.name)
            self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
        except BaseException:
            self.close()
            raise

    def _on_connection(self, action: Callable[[pika.BlockingConnection], T]) -> T:
        """``action`` on the vhost's connection, made again if it was closed meanwhile (by a test's
        ``close_all_connections``, or by RabbitMQ after missed heartbeats while the run was idle)."""
        try:
            return action(self._connection)
        except pika.exceptions.AMQPConnectionError:
            self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
            return action(self._connection)

    def flush(self, queues: Iterable[str]) -> None:
        """Purge ``queues`` of the vhost, with their delay and dead-letter queues (Dramatiq's
        ``.DQ`` and ``.XQ``): every message in them is lost (delivered ones too, once their consumer
        lets go of them). A queue not there yet is passed over."""
        queues = list(queues)
        self._on_connection(lambda connection: _purge_all(connection, queues))

    def count(self, queue: str = "default") -> int:
        """How many messages wait in ``queue`` (ready, not yet delivered); 0 if it does not exist."""
        declared = self._on_connection(lambda connection: _declared(connection, queue))
        return 0 if declared is None else int(declared.message_count)

    def consumers(self, queues: Iterable[str]) -> dict[str, int]:
        """How many consumers each of ``queues`` that exists has."""
        queues = list(queues)
        declared = self._on_connection(lambda connection: {queue: _declared(connection, queue) for queue in queues})
        return {queue: int(method.consumer_count) for queue, method in declared.items() if method is not None}

    def stray_consumers(self, queues: Iterable[str], *, timeout: float = 30.0) -> str | None:
        """Wait until none of ``queues`` has a consumer (an earlier test's worker may still be closing
        its connection); after ``timeout``, who still consumes (see :meth:`describe_clients`), else
        None. The vhost is shared by the run's tests: a consumer left behind would take the next
        tests' messages."""
        queues = list(queues)
        deadline = time.monotonic() + timeout
        while any(self.consumers(queues).values()):
            if time.monotonic() > deadline:
                return f"{self.consumers(queues)}\n{self.describe_clients()}"
            time.sleep(0.2)
        return None

    def describe_clients(self) -> str:
        """The vhost's consumers and connections, and the local process behind each connection."""
        consumers = rabbitmqctl("list_consumers", "-p", self.name, "queue_name", "channel_pid", node=self.node)
        listed = rabbitmqctl("list_connections", "-p", self.name, "--no-table-headers", "peer_port", node=self.node)
        lines = [f"consumers:\n{consumers}", "connections (client port: local process):"]
        for port in listed.split():
            owner = subprocess.run(["ss", "-tnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
            pids = sorted({int(pid) for pid in re.findall(r"pid=(\d+)", owner)})
            lines.append(f"  {port}: {'; '.join(f'{pid} {_command_line(pid)}' for pid in pids) or '?'}")
        return "\n".join(lines)

    def close_connections(self, reason: str = "test") -> None:
        """Close every client connection of the vhost (``rabbitmqctl close_all_connections``)."""
        rabbitmqctl("close_all_connections", "--vhost", self.name, reason, node=self.node)

    def close(self) -> None:
        """Delete the vhost (with its queues and messages); nothing else of the node is touched."""
        connection = getattr(self, "_connection", None)
        try:
            if connection is not None and connection.is_open:
                connection.close()
        except pika.exceptions.AMQPError:
            pass  # closed by the server meanwhile
        finally:
            rabbitmqctl("delete_vhost", self.name, node=self.node)


class RunVhosts:
    """The run's vhosts on the machine's node: the one tests use now (:attr:`current`), and those
    left behind because a consumer an earlier test left was still on them (:meth:`move_on`); all
    deleted at :meth:`close`."""

    def __init__(self) -> None:
        self.current = RabbitVhost()
        self._left: list[RabbitVhost] = []

    def move_on(self) -> RabbitVhost:
        """Leave the current vhost (with whoever consumes there) for a new one."""
        self._left.append(self.current)
        self.current = RabbitVhost()
        return self.current

    def close(self) -> None:
        for vhost in [*self._left, self.current]:
            vhost.close()


class ThrowawayRabbit:
    """A RabbitMQ node of the test's own: its own node name, AMQP and distribution ports, data and
    log dirs in a temp dir (owned by the ``rabbitmq`` user when the tests run as root: Debian's
    scripts switch to it), no plugins; stopped, started again, and removed at the end. Its guest
    user may connect from 127.0.0.1 (RabbitMQ's default).

    A test bed places one elsewhere (tests/hosts/netbed.py): ``dir`` (made here; its parents must
    let the ``rabbitmq`` user through), the AMQP address ``bind`` and ``port``, a ``command_prefix``
    every ``rabbitmq-server`` and ``rabbitmqctl`` runs after (``ip netns exec NS``: the node, its epmd
    and the CLI's connection to them then all live in that network namespace), ``config`` (the
    node's own ``rabbitmq.conf``, in its dir) and ``node_prefix`` (its node name's start). A
    subclass whose node the test cannot reach directly overrides :meth:`in_reach`."""

    def __init__(
        self,
        *,
        dir: Path | None = None,
        bind: str = "127.0.0.1",
        port: int | None = None,
        command_prefix: Sequence[str] = (),
        config: str = "",
        node_prefix: str = "jobrunner_test",
    ) -> None:
        if dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="jobrunner-test-rabbitmq-"))
        else:
            dir.mkdir(mode=0o700)
            self.dir = dir
        self.command_prefix = list(command_prefix)
        self.node = f"{node_prefix}_{secrets.token_hex(4)}@localhost"
        self.port = port or servers.free_port()
        dist_port = servers.free_port()
        (self.dir / "enabled_plugins").write_text("[].\n")
        if config:
            (self.dir / "rabbitmq.conf").write_text(config)
        if os.geteuid() == 0:  # Debian's rabbitmq-server and rabbitmqctl run as the rabbitmq user
            for path in [self.dir, *self.dir.iterdir()]:
                shutil.chown(path, "rabbitmq", "rabbitmq")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": bind,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),  # rabbitmq.conf, if any: else the defaults
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
        }
        self.url = f"amqp://guest:guest@{bind}:{self.port}/%2F"
        try:
            self.start()
        except BaseException:
            self.remove()
            raise

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl`` against this node (after the command prefix); its output."""
        return rabbitmqctl(*args, node=self.node, command_prefix=self.command_prefix)

    def in_reach(self, action: Callable[[], T]) -> T:
        """Run ``action`` (which connects to :attr:`url`) where the node can be reached: here."""
        return action()

    def start(self) -> None:
        """Start the node (detached) and wait until it accepts AMQP connections."""
        subprocess.run(
            [*self.command_prefix, "rabbitmq-server", "-detached"],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.ctl("wait", str(self.dir / "rabbitmq.pid"), "--timeout", str(CTL_TIMEOUT_SECONDS))
        deadline = time.monotonic() + CTL_TIMEOUT_SECONDS
        while True:
            try:
                self.in_reach(lambda: pika.BlockingConnection(pika.URLParameters(self.url)).close())
                return
            except pika.exceptions.AMQPConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def count(self, queue: str = "default") -> int:
        """How many messages wait in ``queue`` (ready, not yet delivered); 0 if it does not exist."""
        declared = self.in_reach(lambda: self._on_connection(lambda connection: _declared(connection, queue)))
        return 0 if declared is None else int(declared.message_count)

    def purge(self, queues: Iterable[str]) -> None:
        """Purge ``queues`` with their delay and dead-letter queues (every message in them lost); a
        queue not there yet is passed over."""
        self.in_reach(lambda: self._on_connection(lambda connection: _purge_all(connection, queues)))

    def _on_connection(self, action: Callable[[pika.BlockingConnection], T]) -> T:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            return action(connection)
        finally:
            if connection.is_open:
                connection.close()

    def stop(self) -> None:
        """Stop the node (its queues and persistent messages stay on disk for the next start)."""
        self.ctl("stop", str(self.dir / "rabbitmq.pid"))

    def remove(self) -> None:
        """Stop the node if it runs, and delete its files."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):  # not running
            self.ctl("stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def _declared(connection: pika.BlockingConnection, queue: str) -> Any:
    """``queue``'s passive declare (its ``message_count`` and ``consumer_count``), None if it does
    not exist."""
    channel = connection.channel()
    try:
        return channel.queue_declare(queue, passive=True).method
    except pika.exceptions.ChannelClosedByBroker:  # 404: no such queue (the channel is closed)
        return None
    finally:
        if channel.is_open:
            channel.close()


def _purge_all(connection: pika.BlockingConnection, queues: Iterable[str]) -> None:
    """Purge each of ``queues`` and its ``.DQ`` and ``.XQ``; one not there is passed over."""
    for queue in queues:
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            channel = connection.channel()
            try:
                channel.queue_purge(name)
            except pika.exceptions.ChannelClosedByBroker:  # 404: no such queue (the channel is closed)
                pass
            finally:
                if channel.is_open:
                    channel.close()
