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
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from jobs.config import Settings

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
