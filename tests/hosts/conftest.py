"""Fixtures of the multi-host scenarios: one test bed (tests/hosts/netbed.py) per module, its
database migrated, and per test an empty database and Redis, healed links and stopped workers."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs import db, migrate, models
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


@pytest.fixture
def bed_settings(netbed: Netbed, tmp_path: Path) -> Settings:
    """Settings as the bed's hosts see them (database and broker over the bridge)."""
    assert netbed.postgres is not None
    return Settings(
        database_url=netbed.postgres.host_url,
        broker_url=netbed.redis_url,
        storage_dir=tmp_path / "uploads",
        job_modules="tests.kinds",
    )


@pytest.fixture
def bed_registry() -> Registry:
    """The job kinds: the shipped ones and ``tests.kinds``."""
    return job_kinds.load_registry(Settings(job_modules="tests.kinds"))


@pytest.fixture
def bed_database(netbed: Netbed, bed_registry: Registry) -> Iterator[db.Database]:
    """The bed's database as the test reaches it (unix socket), emptied, Redis flushed; its sessions
    send job IDs to the bed's Redis (unix socket)."""
    assert netbed.postgres is not None
    client = redis.Redis.from_url(netbed.local_redis_url)
    client.flushdb()
    client.close()
    settings = Settings(broker_url=netbed.local_redis_url, job_modules="tests.kinds")
    broker = producer.make_broker(settings)
    database = db.make_database(
        netbed.postgres.url,
        sender=producer.make_sender(broker),
        registry=bed_registry,
        application_name="netbed-test",
    )
    with database.engine.begin() as conn:
        for table in [kinds.notes, *reversed(models.Base.metadata.sorted_tables)]:
            conn.execute(table.delete())
    yield database
    database.dispose()
    broker.close()
    for a, b in list(netbed.partitions):
        netbed.heal(a, b)


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
        if process.alive():
            process.kill()
        else:
            process.kill_strays()
