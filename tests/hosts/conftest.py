"""Fixtures of the multi-host scenarios: one test bed (tests/hosts/netbed.py) per module, its
database migrated, and per test an empty database and broker, healed links and stopped workers.

A scenario runs on the bed's Redis unless it parametrises ``broker_url`` (``indirect``) with
``redis``, ``rabbitmq`` (the bed's RabbitMQ node, started by the first test that asks for it) or
``postgres`` (the PostgreSQL broker: the bed's database itself); ``--brokers`` picks among them as
for the rest of the suite (tests/conftest.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from jobs import db, migrate, models, sending
from jobs import kinds as job_kinds
from jobs.config import Settings
from jobs.registry import Registry
from tests import kinds
from tests.hosts.netbed import Netbed, NetbedUnavailable, probe
from tests.worker.processes import WorkerProcess
from worker import producer


@pytest.fixture(scope="module")
def netbed() -> Iterator[Netbed]:
    """The bed, built for the module and torn down after it (even on failure); skipped, saying why,
    where network namespaces cannot be created."""
    try:
        probe()
    except NetbedUnavailable as exc:
        pytest.skip(f"multi-host scenarios need network namespaces: {exc}")
    bed = Netbed()
    try:
        assert bed.postgres is not None
        migrate.upgrade(bed.postgres.url)
        engine = db.make_engine(bed.postgres.url, pool_size=1)
        kinds.metadata.create_all(engine)
        engine.dispose()
        yield bed
    finally:
        bed.close()


#: What each broker is called in a scenario's figure, by its URL's scheme.
BROKER_NAMES = {"redis": "Redis", "amqp": "RabbitMQ", "postgresql+psycopg": "PostgreSQL"}


def broker_name(url: str) -> str:
    """``Redis``, ``RabbitMQ`` or ``PostgreSQL``: the broker of ``url``."""
    return BROKER_NAMES[urlsplit(url).scheme]


@pytest.fixture
def broker_url(request: pytest.FixtureRequest, netbed: Netbed) -> str:
    """The broker of the bed's hosts, as they reach it over the bridge: its Redis, or (parametrised)
    its RabbitMQ node or its PostgreSQL (the PostgreSQL broker, the jobs database itself)."""
    kind = getattr(request, "param", "redis")
    assert netbed.postgres is not None
    if kind == "rabbitmq":
        return netbed.rabbitmq.url
    if kind == "postgres":
        return netbed.postgres.host_url
    assert kind == "redis", kind
    return netbed.redis_url


@pytest.fixture
def bed_settings(netbed: Netbed, broker_url: str, tmp_path: Path) -> Settings:
    """Settings as the bed's hosts see them (database and broker over the bridge)."""
    assert netbed.postgres is not None
    return Settings(
        database_url=netbed.postgres.host_url,
        broker_url=broker_url,
        storage_dir=tmp_path / "uploads",
        job_modules="tests.kinds",
    )


@pytest.fixture
def bed_registry() -> Registry:
    """The job kinds: the shipped ones and ``tests.kinds``."""
    return job_kinds.load_registry(Settings(job_modules="tests.kinds"))


@pytest.fixture
def bed_database(netbed: Netbed, broker_url: str, bed_registry: Registry) -> Iterator[db.Database]:
    """The bed's database as the test reaches it (unix socket), emptied, with the bed's broker
    emptied; its sessions send job IDs to that broker: Redis through its unix socket; RabbitMQ from
    the bed's thread in the broker's namespace (the node's own address, which no partition cuts);
    the PostgreSQL broker's wake-ups go out in the jobs' own transactions."""
    assert netbed.postgres is not None
    client = redis.Redis.from_url(netbed.local_redis_url)
    client.flushdb()
    client.close()
    name = broker_name(broker_url)
    if name == "RabbitMQ":
        netbed.rabbitmq.purge(bed_registry.queues())
        settings = Settings(broker_url=broker_url, job_modules="tests.kinds")
    elif name == "PostgreSQL":
        settings = Settings(database_url=netbed.postgres.url, broker_url=netbed.postgres.url, job_modules="tests.kinds")
    else:
        settings = Settings(broker_url=netbed.local_redis_url, job_modules="tests.kinds")
    broker = producer.make_broker(settings)
    sender = producer.make_sender(broker)
    if name == "RabbitMQ":
        # The producer's connection (one per thread) is made, and kept, in the broker's namespace.
        rabbit, send = netbed.rabbitmq, sender

        def sender(messages: Sequence[sending.JobMessage]) -> None:
            rabbit.in_reach(lambda: send(messages))

    database = db.make_database(
        netbed.postgres.url,
        sender=sender,
        registry=bed_registry,
        application_name="netbed-test",
    )
    with database.engine.begin() as conn:
        for table in [kinds.notes, *reversed(models.Base.metadata.sorted_tables)]:
            conn.execute(table.delete())
    yield database
    database.dispose()
    if name == "RabbitMQ":
        netbed.rabbitmq.in_reach(broker.close)
    else:
        broker.close()
    for a, b in list(netbed.partitions):
        netbed.heal(a, b)


@pytest.fixture
def bed_queued(netbed: Netbed, broker_url: str) -> Callable[[str], int]:
    """How many messages wait in a queue of the bed's broker, as the test sees it (Redis: Dramatiq's
    hash of messages; RabbitMQ: the queue's ready messages, asked from the broker's namespace)."""
    if broker_name(broker_url) == "RabbitMQ":
        return netbed.rabbitmq.count

    def count(queue: str = "default") -> int:
        client = redis.Redis.from_url(netbed.local_redis_url)
        try:
            return int(client.hlen(f"dramatiq:{queue}.msgs"))
        finally:
            client.close()

    return count


@pytest.fixture
def host_workers(netbed: Netbed, bed_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``jobctl worker`` on a host of the bed (``host_workers("w1", **env)``); killed after the test."""
    started: list[WorkerProcess] = []
    env = {
        "JOBRUNNER_DATABASE_URL": bed_settings.database_url,
        "JOBRUNNER_BROKER_URL": bed_settings.broker_url,
        "JOBRUNNER_JOB_MODULES": "tests.kinds",
        "JOBRUNNER_STORAGE_DIR": str(bed_settings.storage_dir),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }

    def start(host: str, **options: Any) -> WorkerProcess:
        process = WorkerProcess(
            tmp_path, name=host, command_prefix=["ip", "netns", "exec", netbed.ns(host)], **{**env, **options}
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.clean_up()
