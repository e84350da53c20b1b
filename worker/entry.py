"""The module Dramatiq's worker imports (``dramatiq worker.entry``): it sets up the broker."""

import logging

from worker import broker as _broker

# Dramatiq's CLI logs at INFO; pika (the RabbitMQ client) logs every step of every connection there.
# Its warnings and errors (a connection lost) still show.
logging.getLogger("pika").setLevel(logging.WARNING)

broker = _broker.setup_worker_broker()
