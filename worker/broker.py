"""The worker's broker: Redis or RabbitMQ (as the URL says), the worker's middleware in the order
the runner relies on, and one actor per queue. (The API and ``jobctl`` send through
:mod:`worker.producer` and load none of this.)"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import AsyncIO, Middleware, TimeLimit

from jobs import db, kinds
from jobs.config import Settings, get_settings
from jobs.observe import logs, tracing
from jobs.registry import Registry
from worker import actors, producer
from worker.lifecycle import WorkerLifecycle
from worker.middleware import JobSessionMiddleware
from worker.state import WorkerState


def make_worker_broker(
    settings: Settings, registry: Registry, *, database: db.Database | None = None
) -> dramatiq.Broker:
    """The worker's broker: the lifecycle middleware (database, heartbeat, sweeper, shutdown), the
    job session middleware, then Dramatiq's time limit, and one actor per queue of ``registry``.

    The session middleware comes before TimeLimit so that its ``after_`` hooks run after TimeLimit's
    (Dramatiq runs them in reverse): TimeLimit has cancelled its timer before the job's outcome is
    committed. Left out on purpose: ``Retries`` (the job row owns the attempt count and the retry
    schedule), and ``ShutdownNotifications``, which interrupts every running actor the moment
    shutdown starts; the lifecycle middleware lets jobs finish for ``shutdown_timeout_seconds``
    first, then interrupts. ``database``: a ready one (tests); by default it is built at worker boot.
    """
    state = WorkerState(settings=settings, registry=registry, database=database)
    broker = producer.make_broker(settings)
    for middleware in event_loop_middleware(registry):
        broker.add_middleware(middleware)
    broker.add_middleware(WorkerLifecycle(state))
    for middleware in job_middleware(state):
        broker.add_middleware(middleware)
    actors.declare_actors(broker, registry.queues())
    return broker


def event_loop_middleware(registry: Registry) -> list[Middleware]:
    """Dramatiq's AsyncIO middleware (its event loop thread runs the async kinds), when ``registry``
    has any. It comes first, so its loop starts before the lifecycle's boot hook and stops after
    the lifecycle's shutdown hook closed the asyncio pool."""
    return [AsyncIO()] if registry.has_async_kinds() else []


def job_middleware(state: WorkerState) -> list[Middleware]:
    """What runs each job, in order: the session middleware, then TimeLimit (see above)."""
    return [JobSessionMiddleware(state), TimeLimit(time_limit=state.settings.time_limit_seconds * 1000)]


def setup_worker_broker() -> dramatiq.Broker:
    """Build the worker broker from the environment and make it Dramatiq's global broker."""
    settings = get_settings()
    logs.configure_logging(settings.log_format)  # after Dramatiq set up this process's logging
    if tracing.configure_from_environment("jobrunner-worker"):
        producer.trace_redis()
    broker = make_worker_broker(settings, kinds.load_registry(settings))
    dramatiq.set_broker(broker)
    return broker
