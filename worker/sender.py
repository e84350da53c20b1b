"""Send job IDs to Redis: the :class:`jobs.sending.Sender` the API, worker and CLI hand to ``jobs``."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from jobs import sending
from worker import actors


#: Most messages sent in one Redis pipeline (one round trip).
PIPELINE_SIZE = 500


def make_sender(broker: RedisBroker) -> sending.Sender:
    """A sender that enqueues each job's ID on its queue's actor (delayed when asked); several
    messages go out through one Redis pipeline, one round trip per :data:`PIPELINE_SIZE`."""

    def send(messages: Sequence[sending.JobMessage]) -> None:
        if len(messages) == 1:
            broker.enqueue(_to_message(messages[0]), delay=messages[0].delay_ms)
            return
        for offset in range(0, len(messages), PIPELINE_SIZE):
            with broker.client.pipeline(transaction=False) as pipe:
                pipelined = _PipelinedBroker(broker, pipe)
                for message in messages[offset:offset + PIPELINE_SIZE]:
                    RedisBroker.enqueue(pipelined, _to_message(message), delay=message.delay_ms)  # type: ignore[arg-type]
                pipe.execute()

    return send


def _to_message(message: sending.JobMessage) -> Message:
    return Message(
        queue_name=message.queue,
        actor_name=actors.actor_name(message.queue),
        args=(str(message.job_id),),
        kwargs={},
        options={},
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
            return RedisBroker._dispatch(self, name[len("do_"):])  # type: ignore[arg-type]
        return getattr(self._broker, name)
