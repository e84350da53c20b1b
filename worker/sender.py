"""Send job IDs to Redis: the :class:`jobs.sending.Sender` the API, worker and CLI hand to ``jobs``."""

from __future__ import annotations

from collections.abc import Sequence

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from jobs import sending
from worker import actors


def make_sender(broker: RedisBroker) -> sending.Sender:
    """A sender that enqueues each job's ID on its queue's actor (delayed when asked)."""

    def send(messages: Sequence[sending.JobMessage]) -> None:
        for message in messages:
            broker.enqueue(
                Message(
                    queue_name=message.queue,
                    actor_name=actors.actor_name(message.queue),
                    args=(str(message.job_id),),
                    kwargs={},
                    options={},
                ),
                delay=message.delay_ms,
            )

    return send
