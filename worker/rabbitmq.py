"""RabbitMQ as the broker (``JOBRUNNER_BROKER_URL=amqp://...``): Dramatiq's own ``RabbitmqBroker``.

What Dramatiq does with RabbitMQ, and what the runner relies on:
- Each queue ``q`` is a durable queue with two companions: ``q.DQ`` holds delayed messages (a worker
  consumes it, keeps each message until its ``eta`` and then publishes it to ``q``) and ``q.XQ`` the
  dead-lettered ones (kept 7 days). Messages are persistent.
- A message is acknowledged on the server only once the worker is done with it; when a consumer's
  connection drops (a worker killed, the connection closed, the node restarted) RabbitMQ delivers
  its unacknowledged messages again. The claim makes such a second delivery harmless, as it does
  for Redis.
- Each thread has a connection of its own (a ``threading.local``); a worker consumer thread has
  one more per queue. A dropped connection is replaced on the next send (``enqueue`` retries up to
  6 times) or, for a consumer, by Dramatiq's restart of it after ``dramatiq_restart_delay`` ms.
- With ``confirm_delivery`` each publish waits for RabbitMQ's confirm, so a send that did not reach
  a queue raises (the job stays ``queued`` and the sweeper sends it again), and a queue deleted
  under a running producer is declared again (Dramatiq publishes ``mandatory`` then).

Dramatiq has no bulk enqueue, and a confirm per message costs a round trip (measured here: 370
persistent messages/s confirmed one by one, 7,500/s published 500 to an AMQP transaction). So
:func:`enqueue_many` publishes several messages in one transaction (``tx.select``/``tx.commit``) on a
channel of its own, prepared as ``RabbitmqBroker.enqueue`` prepares them; one message, or a batch
that meets any error, goes through Dramatiq's ``enqueue`` instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions
from dramatiq import Message
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import current_millis, dq_name, q_name

from jobs.config import Settings

logger = logging.getLogger(__name__)

#: Most messages published in one AMQP transaction.
TRANSACTION_SIZE = 500

#: Connection parameters jobrunner sets unless the URL's query names them (pika's URL parameters):
#: an unreachable node fails a send or a health check within seconds, and a publisher blocked by a
#: resource alarm (memory, disk) gives up instead of holding its thread forever.
DEFAULT_PARAMETERS = {
    "socket_timeout": "2",
    "stack_timeout": "5",
    "blocked_connection_timeout": "10",
}


def connection_url(broker_url: str) -> str:
    """``broker_url`` with :data:`DEFAULT_PARAMETERS` added where its query does not set them."""
    parts = urlsplit(broker_url)
    query = dict(parse_qsl(parts.query))
    return urlunsplit(parts._replace(query=urlencode({**DEFAULT_PARAMETERS, **query})))


def make_broker(settings: Settings) -> RabbitmqBroker:
    """A bare RabbitMQ broker (no middleware, no actors) for ``settings.broker_url``, with publisher
    confirms."""
    return RabbitmqBroker(url=connection_url(settings.broker_url), confirm_delivery=True, middleware=[])


def check(broker: RabbitmqBroker) -> None:
    """Open and close a connection of its own to ``broker``'s node (a check that the node answers,
    the credentials hold and the vhost exists, whatever state the threads' connections are in).

    Raises:
        pika.exceptions.AMQPError: the node did not answer or refused the connection.
    """
    pika.BlockingConnection(broker.parameters).close()


#: What :func:`check` raises when the node is unreachable.
UNREACHABLE = (pika.exceptions.AMQPError, OSError)


#: A message to send and its delay in milliseconds (None: at once).
Delayed = tuple[Message[Any], int | None]


def enqueue_many(broker: RabbitmqBroker, messages: Sequence[Delayed]) -> None:
    """Send ``messages``: one through ``broker.enqueue``; several in AMQP transactions of up to
    :data:`TRANSACTION_SIZE`, each committed in one round trip. A transaction that fails (a dropped
    connection, a channel error) and any message RabbitMQ returns as unroutable (its queue was
    deleted) go through ``broker.enqueue`` one by one, which reconnects and declares the queue again;
    a message of a transaction whose commit answer was lost may so go out twice (the claim skips the
    second).

    Raises:
        dramatiq.errors.ConnectionClosed: Dramatiq's ``enqueue`` could not send a message either.
    """
    if len(messages) == 1:
        broker.enqueue(messages[0][0], delay=messages[0][1])
        return
    for offset in range(0, len(messages), TRANSACTION_SIZE):
        batch = messages[offset : offset + TRANSACTION_SIZE]
        returned: Sequence[Delayed]
        try:
            returned = _publish_in_transaction(broker, batch)
        except (pika.exceptions.AMQPError, ConnectionError) as exc:
            logger.info("a transaction of %d messages failed (%r); sending them one by one", len(batch), exc)
            _forget_channel(broker)
            returned = batch
        for message, delay in returned:
            broker.enqueue(message, delay=delay)


class _TransactionChannel:
    """A channel in transaction mode on the broker's connection of this thread, and the bodies of
    the messages RabbitMQ returned on it as unroutable."""

    def __init__(self, broker: RabbitmqBroker) -> None:
        self.channel = broker.connection.channel()  # Dramatiq's connection of this thread
        self.channel.tx_select()
        self.returned: list[bytes] = []
        self.channel.add_on_return_callback(lambda channel, method, properties, body: self.returned.append(body))


#: Each thread's transaction channels, by broker.
_threads = threading.local()


def _transaction_channel(broker: RabbitmqBroker) -> _TransactionChannel:
    if not hasattr(_threads, "channels"):
        _threads.channels = {}
    found: _TransactionChannel | None = _threads.channels.get(id(broker))
    if found is None or not found.channel.is_open:  # none yet, or its connection was replaced
        found = _threads.channels[id(broker)] = _TransactionChannel(broker)
    return found


def _forget_channel(broker: RabbitmqBroker) -> None:
    found = getattr(_threads, "channels", {}).pop(id(broker), None)
    if found is not None and found.channel.is_open:
        try:
            found.channel.close()
        except pika.exceptions.AMQPError:
            logger.debug("the transaction channel could not be closed", exc_info=True)


def _publish_in_transaction(broker: RabbitmqBroker, batch: Sequence[Delayed]) -> list[Delayed]:
    """Publish ``batch`` in one transaction as ``RabbitmqBroker.enqueue`` would (queues declared,
    a delayed message to the delay queue with its ``eta``, the enqueue hooks emitted, persistent,
    ``mandatory``); the messages RabbitMQ returned as unroutable."""
    transaction = _transaction_channel(broker)
    transaction.returned.clear()
    prepared = []
    for original, delay in batch:
        broker.declare_queue(original.queue_name, ensure=True)
        message = original
        if delay is not None:
            message = message.copy(queue_name=dq_name(message.queue_name), options={"eta": current_millis() + delay})
        prepared.append((original, delay, message, message.encode()))
    for _, delay, message, body in prepared:
        broker.emit_before("enqueue", message, delay)
        transaction.channel.basic_publish(
            exchange="",
            routing_key=message.queue_name,
            body=body,
            properties=pika.BasicProperties(delivery_mode=2, priority=message.options.get("broker_priority")),
            mandatory=True,
        )
    transaction.channel.tx_commit()
    broker.connection.process_data_events(time_limit=0)  # run the return callbacks (sent before commit-ok)
    for _, delay, message, _ in prepared:
        broker.emit_after("enqueue", message, delay)
    returned = set(transaction.returned)
    for _, _, message, body in prepared:
        if body in returned:
            broker.queues_pending.add(q_name(message.queue_name))  # Dramatiq declares it again
    return [(original, delay) for original, delay, _, body in prepared if body in returned]
