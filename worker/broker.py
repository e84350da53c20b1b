"""The Redis broker and its middleware, in the order the runner relies on."""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import TimeLimit

from jobs import db, registry
from jobs.config import Settings, get_settings
from worker import actors, middleware


#: Bounds on talking to Redis, so an unreachable broker fails a send or a health check quickly.
REDIS_CONNECT_TIMEOUT_SECONDS = 2.0
REDIS_SOCKET_TIMEOUT_SECONDS = 10.0


def _redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.broker_url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
    )


def make_broker(settings: Settings) -> RedisBroker:
    """A bare Redis broker for sending IDs (the API, the CLI): no middleware, no actors."""
    return RedisBroker(client=_redis_client(settings), middleware=[])


def make_worker_broker(settings: Settings, *, database: db.Database | None = None) -> RedisBroker:
    """The worker's broker: the job session middleware first, then Dramatiq's time limit, and one
    actor per queue of the registered kinds.

    The session middleware is added first so that its ``after_`` hooks run last (Dramatiq runs them
    in reverse): TimeLimit has cancelled its timer before the job's outcome is committed. Left out
    on purpose: ``Retries`` (the job row owns the attempt count and the retry schedule), and
    ``ShutdownNotifications``, which interrupts every running actor the moment shutdown starts; the
    session middleware lets jobs finish for ``shutdown_timeout_seconds`` first, then interrupts.
    ``database``: a ready one (tests); by default the middleware builds it at worker boot.
    """
    registry.load_kinds(settings.job_module_names)
    broker = RedisBroker(client=_redis_client(settings), middleware=[])
    broker.add_middleware(middleware.JobSessionMiddleware(settings, database=database))
    broker.add_middleware(TimeLimit(time_limit=settings.time_limit_seconds * 1000))
    actors.declare_actors(broker, registry.queues())
    return broker


def setup_worker_broker() -> RedisBroker:
    """Build the worker broker from the environment and make it Dramatiq's global broker."""
    broker = make_worker_broker(get_settings())
    dramatiq.set_broker(broker)
    return broker
