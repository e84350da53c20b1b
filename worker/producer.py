"""The producer side of the broker: what the API and ``jobctl`` load to send job IDs to Redis.

It carries no worker runtime (no middleware, heartbeat, sweeper or time limit): importing the API
loads only this. The worker's broker (:mod:`worker.broker`) consumes the queues these messages go to.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name

from jobs import registry, sending
from jobs.config import Settings
from jobs.observe import tracing

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


def make_broker(settings: Settings) -> JobBroker:
    """A bare Redis broker for sending IDs (the API, the CLI): no middleware, no actors."""
    return JobBroker(client=redis_client(settings), middleware=[])  # type: ignore[no-untyped-call]


def held_probe(broker: RedisBroker) -> sending.HeldProbe:
    """Which of the given messages Redis still holds: queued or delivered and not yet acknowledged
    (in the queue's message hash), or delayed (in its delay queue's hash). One round trip."""

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


def make_sender(broker: RedisBroker) -> sending.Sender:
    """A sender that enqueues each job's ID on its queue's actor (delayed when asked); several
    messages go out through one Redis pipeline, one round trip per :data:`PIPELINE_SIZE`."""

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

    Dramatiq has no bulk enqueue. Its ``RedisBroker.enqueue`` is run unchanged on this object, so
    each message is prepared exactly as Dramatiq does it (a fresh ``redis_message_id``, the delay
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
