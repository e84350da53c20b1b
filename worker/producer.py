"""The producer side of the broker: what the API and ``jobctl`` load to send job IDs to the broker.

It carries no worker runtime (no middleware, heartbeat, sweeper or time limit): importing the API
loads only this. The worker's broker (:mod:`worker.broker`) consumes the queues these messages go to.

The broker is chosen by the scheme of ``JOBRUNNER_BROKER_URL`` in one place, :data:`BROKERS`: Redis
(``redis://``, ``rediss://``, ``unix://``), RabbitMQ (``amqp://``, ``amqps://``, see
:mod:`worker.rabbitmq`) or PostgreSQL, the jobs database itself (``postgresql://``,
``postgresql+psycopg://``, see :mod:`worker.pgbroker`). A new kind of broker adds its factory and health check there.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import redis
from dramatiq import Message
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name

from jobs import registry, sending
from jobs.config import Settings
from jobs.observe import tracing
from worker import pgbroker, rabbitmq

logger = logging.getLogger(__name__)

#: Bounds on talking to Redis, so an unreachable broker fails a send or a health check quickly.
REDIS_CONNECT_TIMEOUT_SECONDS = 2.0
REDIS_SOCKET_TIMEOUT_SECONDS = 10.0
#: Actor names: one actor per queue, all running the same function.
ACTOR_PREFIX = "jobrunner.run"
#: Most messages sent in one Redis pipeline (one round trip).
PIPELINE_SIZE = 500


def actor_name(queue: str) -> str:
    """The name of the actor consuming ``queue``."""
    return ACTOR_PREFIX if queue == registry.DEFAULT_QUEUE else f"{ACTOR_PREFIX}.{queue}"


def trace_redis() -> None:
    """Trace Redis commands (OpenTelemetry's Redis instrumentation) if this process traces."""
    if tracing.enabled():
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument(tracer_provider=tracing.provider())


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client for the broker URL, with bounded connect and socket timeouts."""
    return redis.Redis.from_url(
        settings.broker_url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
    )


class JobBroker(RedisBroker):
    """Dramatiq's Redis broker, with one change: a message is kept in Redis under its own
    ``message_id`` (which :func:`to_message` sets from the job's :class:`~jobs.sending.JobMessage`)
    instead of a fresh random key, so :func:`held_probe` can ask Redis whether it still holds the
    message a job was last sent with. Dramatiq picks a random key because its ``Retries`` middleware
    enqueues the same message again while it is still unacknowledged; the runner never does that
    (its retries are new messages) and every key it sends is new. The rest is ``RedisBroker.enqueue``
    as of the pinned Dramatiq (checked by ``tests/worker/test_producer.py``).
    """

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        queue_name = message.queue_name
        message = message.copy(options={"redis_message_id": message.message_id})
        if delay is not None:
            queue_name = dq_name(queue_name)
            message = message.copy(queue_name=queue_name, options={"eta": current_millis() + delay})
        self.emit_before("enqueue", message, delay)
        self.do_enqueue(queue_name, message.options["redis_message_id"], message.encode())
        self.emit_after("enqueue", message, delay)
        return message


def held_probe(broker: dramatiq.Broker) -> sending.HeldProbe | None:
    """For a Redis broker: which of the given messages Redis still holds, queued or delivered and not
    yet acknowledged (in the queue's message hash), or delayed (in its delay queue's hash), in one
    round trip. None for a broker that cannot tell without consuming (RabbitMQ): the sweeper then
    re-sends by time alone."""
    if not isinstance(broker, RedisBroker):
        return None

    def held(messages: Sequence[sending.JobMessage]) -> set[uuid.UUID]:
        if not messages:
            return set()
        with broker.client.pipeline(transaction=False) as pipe:
            for message in messages:
                key = str(message.message_id or message.job_id)
                pipe.hexists(f"{broker.namespace}:{message.queue}.msgs", key)
                pipe.hexists(f"{broker.namespace}:{dq_name(message.queue)}.msgs", key)
            answers = pipe.execute()
        return {
            message.job_id
            for message, queued, delayed in zip(messages, answers[0::2], answers[1::2], strict=True)
            if queued or delayed
        }

    return held


class BrokerUnreachable(Exception):
    """The broker did not answer a health check; the message names the driver's error."""


@dataclasses.dataclass(frozen=True)
class BrokerKind:
    """How jobrunner builds and checks one kind of broker."""

    #: A bare broker for the settings' URL: no middleware, no actors (the worker adds its own).
    make_broker: Callable[[Settings], dramatiq.Broker]
    #: Raises one of ``unreachable`` when the broker does not answer.
    check: Callable[[Any], None]
    unreachable: tuple[type[BaseException], ...]


def _make_redis_broker(settings: Settings) -> JobBroker:
    return JobBroker(client=redis_client(settings), middleware=[])  # type: ignore[no-untyped-call]


def _ping_redis(broker: RedisBroker) -> None:
    broker.client.ping()


def _make_postgres_broker(settings: Settings) -> pgbroker.PostgresBroker:
    return pgbroker.make_broker(settings, actor_name=actor_name)


REDIS = BrokerKind(make_broker=_make_redis_broker, check=_ping_redis, unreachable=(redis.RedisError,))
RABBITMQ = BrokerKind(make_broker=rabbitmq.make_broker, check=rabbitmq.check, unreachable=rabbitmq.UNREACHABLE)
POSTGRES = BrokerKind(make_broker=_make_postgres_broker, check=pgbroker.check, unreachable=pgbroker.UNREACHABLE)
#: The broker for each scheme of ``JOBRUNNER_BROKER_URL`` (``jobs.config.BROKER_SCHEMES`` lists them).
BROKERS: dict[str, BrokerKind] = {
    "redis": REDIS,
    "rediss": REDIS,
    "unix": REDIS,
    "amqp": RABBITMQ,
    "amqps": RABBITMQ,
    "postgresql": POSTGRES,
    "postgresql+psycopg": POSTGRES,
}


def broker_kind(settings: Settings) -> BrokerKind:
    """The kind of broker ``settings.broker_url`` names."""
    return BROKERS[urlsplit(settings.broker_url).scheme]


def make_broker(settings: Settings) -> dramatiq.Broker:
    """A bare broker for sending IDs (the API, the CLI), of the kind the URL names: no middleware,
    no actors."""
    return broker_kind(settings).make_broker(settings)


def check_broker(settings: Settings, broker: dramatiq.Broker) -> None:
    """Whether ``broker`` answers (``/healthz``).

    Raises:
        BrokerUnreachable: it did not; the message names the driver's error.
    """
    kind = broker_kind(settings)
    try:
        kind.check(broker)
    except kind.unreachable as exc:
        raise BrokerUnreachable(type(exc).__name__) from exc


def make_sender(broker: dramatiq.Broker) -> sending.Sender:
    """A sender that enqueues each job's ID on its queue's actor (delayed when asked). Several
    messages go out through one Redis pipeline, one round trip per :data:`PIPELINE_SIZE`, or in
    RabbitMQ transactions (:func:`worker.rabbitmq.enqueue_many`); PostgreSQL's wake-up goes out in
    the jobs' own transaction (:class:`worker.pgbroker.PostgresSender`); other brokers take one
    ``enqueue`` each, Dramatiq's public path."""
    if isinstance(broker, pgbroker.PostgresBroker):
        return pgbroker.PostgresSender(broker)
    if isinstance(broker, RabbitmqBroker):
        return lambda messages: rabbitmq.enqueue_many(broker, [(to_message(m), m.delay_ms) for m in messages])
    if not isinstance(broker, RedisBroker):
        return functools.partial(_enqueue_each, broker)

    def send(messages: Sequence[sending.JobMessage]) -> None:
        if len(messages) == 1:
            broker.enqueue(to_message(messages[0]), delay=messages[0].delay_ms)
            return
        for offset in range(0, len(messages), PIPELINE_SIZE):
            with broker.client.pipeline(transaction=False) as pipe:
                pipelined = _PipelinedBroker(broker, pipe)
                for message in messages[offset : offset + PIPELINE_SIZE]:
                    JobBroker.enqueue(pipelined, to_message(message), delay=message.delay_ms)  # type: ignore[arg-type]
                pipe.execute()

    return send


def _enqueue_each(broker: dramatiq.Broker, messages: Sequence[sending.JobMessage]) -> None:
    for message in messages:
        broker.enqueue(to_message(message), delay=message.delay_ms)


def to_message(message: sending.JobMessage) -> Message[Any]:
    """The Dramatiq message carrying one job's ID to its queue's actor, with the job message's key
    as its ``message_id`` (a fresh one when it has none)."""
    return Message(
        queue_name=message.queue,
        actor_name=actor_name(message.queue),
        args=(str(message.job_id),),
        kwargs={},
        options={},
        message_id=str(message.message_id or uuid.uuid4()),
    )


class _PipelinedBroker:
    """``broker`` with its Lua dispatch script bound to a Redis pipeline.

    Dramatiq has no bulk enqueue. :meth:`JobBroker.enqueue` is run unchanged on this object, so
    each message is prepared exactly as a single send does it (its ``redis_message_id``, the delay
    queue and ``eta`` for a delayed one, the enqueue hooks); only the script call it ends in, made
    through ``RedisBroker._dispatch`` reading ``self.scripts["dispatch"]``, is buffered in the
    pipeline (redis-py's ``Script`` loads itself there if Redis lacks it) instead of a round trip.
    """

    def __init__(self, broker: RedisBroker, pipe: Any) -> None:
        self._broker = broker
        self.scripts = {**broker.scripts, "dispatch": functools.partial(broker.scripts["dispatch"], client=pipe)}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return RedisBroker._dispatch(self, name[len("do_") :])  # type: ignore[arg-type, no-untyped-call]
        return getattr(self._broker, name)
