"""Fixtures: a real database (PostgreSQL, or SQLite with JOBRUNNER_TEST_DATABASE=sqlite), a real
Redis, real Dramatiq workers. The schema is built once per run; each test starts from empty tables
and an empty Redis database.

The run leaves the machine's servers as they were (see tests/servers.py): its PostgreSQL database
is a private one, created on the machine's server and dropped at the end; its Redis is a
redis-server of its own; the test that restarts PostgreSQL restarts a throwaway server of its own."""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.app import create_app
from jobs import db, migrate, models, store
from jobs import kinds as job_kinds
from jobs.config import Settings, get_settings
from jobs.kinds.files import handlers as files_handler
from jobs.kinds.files import models as file_models
from jobs.registry import Registry
from jobs.store import checking
from tests import kinds, rabbitmq, servers
from worker import broker as worker_broker
from worker import pgbroker, producer, testing

#: Which database the run uses: "postgresql" (default) or "sqlite".
BACKEND = os.environ.get("JOBRUNNER_TEST_DATABASE", "postgresql")
#: A PostgreSQL URL allowed to create databases; the run creates its own there and drops it at the end.
PG_ADMIN_URL = os.environ.get("JOBRUNNER_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
#: A Redis to use instead of starting one: the run then takes an empty db there (the URL's, or a
#: random one), deletes only the keys it made, and refuses to run if it finds none empty.
REDIS_OVERRIDE_URL = os.environ.get("JOBRUNNER_TEST_REDIS_URL")
#: Longest a test waits for the workers to drain the queues.
DRAIN_TIMEOUT_MS = 60_000


def pytest_sessionstart(session: pytest.Session) -> None:
    # A SIGTERM (CI stopping the run, `timeout`) ends the run as Ctrl-C does: with the session's
    # teardown, which stops the run's Redis and drops its database.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


#: Every broker a test can run on: the ``broker_url`` fixture's parameters.
BROKERS = ("redis", "rabbitmq", "postgres")
#: Fixtures through which a test's outcome passes through a broker: a worker consuming messages
#: (in process or as processes), the worker's broker itself, or the messages a queue holds. A test
#: that asks for one runs once per broker, as a test marked ``brokers`` does.
BROKER_FIXTURES = frozenset({"broker", "worker", "drain", "workers", "queued_messages"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--brokers",
        default=",".join(BROKERS),
        help="comma-separated brokers to run the broker-dependent tests on (default: all); a test "
        "that is not broker-dependent runs on Redis, so only when redis is among them",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A broker-dependent test (marked `brokers`, or asking for a fixture of BROKER_FIXTURES) runs
    # once per broker: Redis; RabbitMQ, on the PostgreSQL pass only (to keep CI's time: the broker
    # does not meet the database); and PostgreSQL, the jobs database itself (which needs a
    # PostgreSQL database). `brokers(without=(...))` leaves brokers out, with a comment saying why.
    # A test that parametrises `broker_url` itself (a test of one broker) is left as it is.
    if "broker_url" not in metafunc.fixturenames or _parametrises_broker_url(metafunc):
        return
    if "throwaway_rabbitmq" in metafunc.fixturenames:  # a test of its own RabbitMQ node
        metafunc.parametrize("broker_url", ["rabbitmq"], indirect=True)
        return
    marker = metafunc.definition.get_closest_marker("brokers")
    if marker is None and not BROKER_FIXTURES.intersection(metafunc.fixturenames):
        return
    without = marker.kwargs.get("without", ()) if marker else ()
    params = [name for name in BROKERS if name not in without and (BACKEND != "sqlite" or name == "redis")]
    metafunc.parametrize("broker_url", params, indirect=True)


def _parametrises_broker_url(metafunc: pytest.Metafunc) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "broker_url" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _select_brokers(config, items)
    if BACKEND != "sqlite":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (row locks or server views); this run is SQLite")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


def broker_of(item: pytest.Item) -> str:
    """The broker ``item`` runs on: its ``broker_url`` parameter, else Redis (the default)."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("broker_url", "redis") if callspec else "redis"


def _select_brokers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the items whose broker ``--brokers`` leaves out (make test runs them in lanes)."""
    wanted = set(config.getoption("brokers").split(","))
    if unknown := wanted - set(BROKERS):
        raise pytest.UsageError(f"--brokers: unknown {sorted(unknown)}; known: {', '.join(BROKERS)}")
    deselected = [item for item in items if broker_of(item) not in wanted]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if broker_of(item) in wanted]


def _migrate(url: str) -> None:
    migrate.upgrade(url)
    engine = db.make_engine(url, pool_size=1)
    kinds.metadata.create_all(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated database for this run: a SQLite file, or a database of the run's own on the
    PostgreSQL server of PG_ADMIN_URL, dropped at the end."""
    if BACKEND == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'jobrunner.db'}"
        _migrate(url)
        yield url
        return
    database = servers.PrivateDatabase(PG_ADMIN_URL)
    try:
        _migrate(database.url)
        yield database.url
    finally:
        database.drop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.RunRedis]:
    """The run's Redis: a redis-server of its own, or an empty db claimed on JOBRUNNER_TEST_REDIS_URL."""
    if REDIS_OVERRIDE_URL:
        try:
            server: servers.RunRedis = servers.ClaimedRedisDb(REDIS_OVERRIDE_URL)
        except (RuntimeError, ValueError, redis.RedisError) as exc:
            pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
    else:
        server = servers.PrivateRedis()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: servers.RunRedis) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.ping()  # a missing Redis fails the run; it is never skipped
    yield client
    client.close()


@pytest.fixture
def flush_redis(redis_server: servers.RunRedis) -> Callable[[], None]:
    """Empty the run's Redis db (every message lost), deleting only what the run put there."""
    return redis_server.flush


@pytest.fixture(scope="session")
def rabbitmq_vhosts() -> Iterator[rabbitmq.RunVhosts]:
    """The run's vhosts on the machine's RabbitMQ (see tests/rabbitmq.py), deleted at the end."""
    vhosts = rabbitmq.RunVhosts()
    try:
        yield vhosts
    finally:
        vhosts.close()


@functools.cache
def _test_kind_queues() -> tuple[str, ...]:
    """The queues of the shipped job kinds and ``tests.kinds`` (the same for every test)."""
    return tuple(job_kinds.load_registry(Settings(job_modules="tests.kinds")).queues())


@pytest.fixture
def rabbitmq_vhost(rabbitmq_vhosts: rabbitmq.RunVhosts, capsys: pytest.CaptureFixture[str]) -> rabbitmq.RabbitVhost:
    """The run's vhost, with no consumer on the test kinds' queues when the test starts. One left
    there by an earlier test (it would take this test's messages) is named on the terminal, and the
    test runs on a new vhost: the suite tests jobrunner, and a process a test left behind must not
    fail the tests after it, nor go unseen."""
    stray = rabbitmq_vhosts.current.stray_consumers(_test_kind_queues())
    if stray is None:
        return rabbitmq_vhosts.current
    message = f"a consumer an earlier test left is on the run's vhost {rabbitmq_vhosts.current.name}: {stray}"
    with capsys.disabled():
        print(f"\n[warning] {message}\n[warning] this test and the next run on a new vhost")
    return rabbitmq_vhosts.move_on()


@pytest.fixture
def throwaway_rabbitmq() -> Iterator[rabbitmq.ThrowawayRabbit]:
    """A RabbitMQ node of the test's own (see tests/rabbitmq.py); a test that asks for it runs on
    it (settings, database, worker processes). Stopped and removed afterwards."""
    node = rabbitmq.ThrowawayRabbit()
    try:
        yield node
    finally:
        node.remove()


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> str:
    """The test's broker: the run's Redis, or (in a test marked ``brokers``, parametrised) the run's
    RabbitMQ vhost, or the test's own RabbitMQ node if it asks for ``throwaway_rabbitmq``, or the
    test's PostgreSQL database (the throwaway server's, if the test has one)."""
    if "throwaway_rabbitmq" in request.fixturenames:
        return request.getfixturevalue("throwaway_rabbitmq").url
    if getattr(request, "param", "redis") == "rabbitmq":
        return request.getfixturevalue("rabbitmq_vhost").url
    if getattr(request, "param", "redis") == "postgres":
        return the_database_url(request)
    return request.getfixturevalue("redis_url")


def the_database_url(request: pytest.FixtureRequest) -> str:
    """The URL of the test's database: the throwaway PostgreSQL server's if the test has one."""
    database_fixture = "throwaway_postgres" if "throwaway_postgres" in request.fixturenames else "database_url"
    database_url = request.getfixturevalue(database_fixture)
    return database_url if isinstance(database_url, str) else database_url.url


@pytest.fixture
def flush_broker(request: pytest.FixtureRequest, broker_url: str) -> Callable[[], None]:
    """Empty the test's broker (every message lost): the run's Redis db, or the queues of the
    test's job kinds in the run's vhost (a throwaway node starts empty; the PostgreSQL broker has no
    messages apart from the rows the database fixture empties)."""
    if "throwaway_rabbitmq" in request.fixturenames or broker_url.startswith("postgresql"):
        return lambda: None
    if broker_url.startswith("amqp"):
        vhost, queues = request.getfixturevalue("rabbitmq_vhost"), request.getfixturevalue("kind_registry").queues()
        return lambda: vhost.flush(queues)
    return request.getfixturevalue("redis_server").flush


@pytest.fixture
def throwaway_postgres() -> Iterator[servers.ThrowawayPostgres]:
    """A PostgreSQL server of the test's own (see servers.ThrowawayPostgres), migrated; a test that
    asks for it runs on it (settings, database, worker processes). Stopped and removed afterwards."""
    server = servers.ThrowawayPostgres()
    try:
        _migrate(server.url)
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings for the test, also exported to the environment (for ``get_settings`` and children)."""
    values = {
        "database_url": the_database_url(request),
        "broker_url": broker_url,
        "storage_dir": str(tmp_path / "uploads"),
        "retry_backoff_seconds": "0.01",
        "job_modules": "tests.kinds",
    }
    for key, value in values.items():
        monkeypatch.setenv(f"JOBRUNNER_{key.upper()}", value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


#: application_name of the test's connections, to find them in pg_stat_activity.
APPLICATION_NAME = "jobrunner-test"


@pytest.fixture
def kind_registry(settings: Settings) -> Registry:
    """The job kinds of the app under test: the shipped ones and ``tests.kinds``."""
    return job_kinds.load_registry(settings)


@pytest.fixture
def database(settings: Settings, flush_broker: Callable[[], None], kind_registry: Registry) -> Iterator[db.Database]:
    """The run's database, emptied, with the broker flushed; its sessions send job IDs to the test's broker."""
    flush_broker()
    broker = producer.make_broker(settings)
    database = db.make_database(
        settings.database_url,
        pool_size=10,
        sender=producer.make_sender(broker),
        registry=kind_registry,
        application_name=APPLICATION_NAME,
    )
    _empty(database)
    yield database
    checked_out = database.engine.pool.checkedout()
    database.dispose()
    broker.close()
    assert checked_out == 0, "a test left a connection checked out"


def _empty(database: db.Database) -> None:
    """Delete every row of every table (children first). Measured on PostgreSQL 15 against the
    other ways to start each test empty: these deletes take ~3 ms, TRUNCATE of the same tables
    ~45 ms, cloning a template database (CREATE DATABASE ... TEMPLATE) ~50-85 ms; only a test that
    left ~200,000 rows makes the deletes cost more (~150 ms), and few do."""
    tables = [kinds.notes, *reversed(models.Base.metadata.sorted_tables)]
    with database.engine.begin() as conn:
        for table in tables:
            conn.execute(table.delete())


@pytest.fixture
def broker(settings: Settings, kind_registry: Registry, database: db.Database) -> Iterator[dramatiq.Broker]:
    """The worker's broker (lifecycle and session middleware, time limit, actors) over the test database."""
    broker = worker_broker.make_worker_broker(settings, kind_registry, database=database)
    dramatiq.set_broker(broker)
    yield broker
    broker.close()


@pytest.fixture
def worker(broker: dramatiq.Broker) -> Iterator[dramatiq.Worker]:
    """A real Dramatiq worker (8 threads) in this process, consuming the test's broker."""
    # Dramatiq's CLI emits process_boot in each worker process (TimeLimit starts its timer thread
    # there); an in-process worker must do the same, with the one timer thread of this process.
    testing.boot_in_process(broker)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=10)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def drain(broker: dramatiq.Broker, worker: dramatiq.Worker, database: db.Database) -> Callable[[], None]:
    """Wait until every queue (delayed messages included) is empty and the worker idle."""

    def wait() -> None:
        if isinstance(broker, RabbitmqBroker):
            _drain_rabbitmq(broker, worker, database)
            return
        if isinstance(broker, pgbroker.PostgresBroker):
            _drain_postgres(broker, worker)
            return
        for queue in broker.get_declared_queues():
            broker.join(queue, timeout=DRAIN_TIMEOUT_MS)
        worker.join()

    return wait


def _drain_rabbitmq(broker: RabbitmqBroker, worker: dramatiq.Worker, database: db.Database) -> None:
    # RabbitMQ counts only the messages not yet delivered: a delayed message the worker holds until
    # its eta, then publishes to its queue, is in neither count meanwhile (and its counts lag). So:
    # wait for the queues and the worker in turn until the queues are still empty after the worker
    # went idle, and the database (the truth) has no job waiting for a worker.
    deadline = time.monotonic() + DRAIN_TIMEOUT_MS / 1000
    while True:
        for queue in broker.get_declared_queues():
            broker.join(queue, min_successes=2, idle_time=20, timeout=DRAIN_TIMEOUT_MS)
        worker.join()
        if not any(sum(broker.get_queue_message_counts(q)[:2]) for q in broker.get_declared_queues()):
            with database.engine.connect() as conn:
                queues = broker.get_declared_queues()
                if not sum(store.count_unfinished(conn, queue, running=False) for queue in queues):
                    return
        assert time.monotonic() < deadline, "the RabbitMQ queues did not drain"


def _drain_postgres(broker: pgbroker.PostgresBroker, worker: dramatiq.Worker) -> None:
    # The worker claims as it takes: the broker's join waits for no job waiting and none held by
    # this process (not for a job a test leaves running under "another worker's" claim), then the
    # worker must be idle, with nothing taken or done since before the first queue's join: a job
    # of one queue may create a job of another queue already joined (a batch's plan, its chunks).
    while True:
        changes = broker.claims.changes if broker.claims is not None else None
        for queue in broker.get_declared_queues():
            broker.join(queue, timeout=DRAIN_TIMEOUT_MS)
        worker.join()
        if broker.claims is None or broker.claims.changes == changes:
            return


@pytest.fixture
def make_job(database: db.Database) -> Callable[..., uuid.UUID]:
    """Create and commit a job (its ID is sent to Redis after the commit); returns its ID."""

    def make(kind: str = "noop", args: dict[str, Any] | None = None, **options: Any) -> uuid.UUID:
        with db.session_scope(database.sessions) as session:
            return store.create_job(session, kind, args, **options).id

    return make


@pytest.fixture
def make_records(database: db.Database) -> Callable[[list[dict[str, Any]]], tuple[uuid.UUID, list[int]]]:
    """Commit a processed file holding ``rows`` as its records; (file_id, record IDs in row order)."""

    def make(rows: list[dict[str, Any]]) -> tuple[uuid.UUID, list[int]]:
        file_id = uuid.uuid4()
        with db.session_scope(database.sessions) as session:
            session.add(
                file_models.File(
                    id=file_id,
                    name="data.csv",
                    size_bytes=1,
                    sha256="0" * 64,
                    storage_key=uuid.uuid4().hex,
                    status=file_models.FileStatus.PROCESSED,
                    rows_total=len(rows),
                    rows_imported=len(rows),
                    rows_rejected=0,
                    row_errors=[],
                    byte_offset=0,
                    created_at=store.utcnow(),
                )
            )
            session.flush()
            files_handler.insert_records(session, file_id, list(enumerate(rows, start=1)))
            ids = list(
                session.scalars(
                    select(file_models.Record.id)
                    .where(file_models.Record.file_id == file_id)
                    .order_by(file_models.Record.row_number)
                )
            )
        return file_id, ids

    return make


@pytest.fixture
def fetch(database: db.Database) -> Callable[[uuid.UUID], tuple[models.Job, list[models.JobAttempt]]]:
    """Read a job and its history in a short session of its own."""

    def read(job_id: uuid.UUID) -> tuple[models.Job, list[models.JobAttempt]]:
        with database.readers() as session:
            return store.get_job(session, job_id), store.list_attempts(session, job_id)

    return read


@pytest.fixture
def invariants_hold(database: db.Database, kind_registry: Registry) -> Iterator[None]:
    """After the test (and the fixtures it asked for after this one, such as its worker processes,
    have stopped): what ``jobctl check`` checks holds in its database. Fault-tolerance tests use it
    (``pytestmark = pytest.mark.usefixtures("invariants_hold")``)."""
    yield
    with database.readers() as session:
        report = checking.run_checks(session, checking.checks_of(kind_registry))
    assert report.ok, "jobctl check after the test:\n" + "\n".join(map(str, report.violations))


@pytest.fixture
def count_notes(database: db.Database) -> Callable[..., int]:
    def count(job_id: uuid.UUID | None = None) -> int:
        query = kinds.notes.select()
        if job_id is not None:
            query = query.where(kinds.notes.c.job_id == job_id)
        with database.engine.connect() as conn:
            return len(conn.execute(query).all())

    return count


@pytest.fixture
def client(settings: Settings, database: db.Database) -> Iterator[TestClient]:
    """The real app, in process, against the test database and Redis."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def queued_messages(request: pytest.FixtureRequest, broker_url: str) -> Callable[[str], int]:
    """How many messages wait in a queue of the test's broker (Redis: Dramatiq's own layout, a hash
    of messages; RabbitMQ: the queue's ready messages)."""
    if broker_url.startswith("amqp"):
        return request.getfixturevalue("rabbitmq_vhost").count
    if broker_url.startswith("postgresql"):
        return _waiting_rows(request.getfixturevalue("database"))
    redis_client = request.getfixturevalue("redis_client")

    def count(queue: str = "default") -> int:
        return redis_client.hlen(f"dramatiq:{queue}.msgs")

    return count


def _waiting_rows(database: db.Database) -> Callable[[str], int]:
    """The PostgreSQL broker's messages are its rows: a queue holds its jobs that can be taken
    (queued, or retrying and due), and its delay queue (``<queue>.DQ``, as Dramatiq names it) the
    retries not yet due and the jobs scheduled to run later, as Redis's and RabbitMQ's would."""

    def count(queue: str = "default") -> int:
        now, status = store.utcnow(), models.Job.status
        if queue.endswith(".DQ"):
            waits = (status == models.JobStatus.SCHEDULED) | (
                (status == models.JobStatus.RETRYING) & (models.Job.next_retry_at > now)
            )
        else:
            waits = (status == models.JobStatus.QUEUED) | (
                (status == models.JobStatus.RETRYING) & (models.Job.next_retry_at <= now)
            )
        query = select(func.count()).where(models.Job.queue == queue.removesuffix(".DQ"), waits)
        with database.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    return count


@pytest.fixture
def session(database: db.Database) -> Iterator[Session]:
    with database.sessions() as session:
        yield session


@pytest.fixture(autouse=True)
def _quiet_dramatiq_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
