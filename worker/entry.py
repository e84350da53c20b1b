"""The module Dramatiq's worker imports (``dramatiq worker.entry``): it sets up the broker."""

from worker import broker as _broker

broker = _broker.setup_worker_broker()
