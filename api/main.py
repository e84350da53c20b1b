"""The ASGI entry point for uvicorn (``api.main:app``): builds the app from the environment.

Once it is built, every object alive (modules, the app, its routes and metrics) is moved out of the
garbage collector's reach (``gc.freeze``): they live as long as the process, and a full collection
walking them all paused a request by about 100 ms (the first scrapes of ``GET /metrics`` after
start, ``tests/benchmarks/metrics_scrape.py``)."""

import gc

from api.app import create_app
from jobs.config import get_settings
from jobs.observe import logs, tracing
from worker import producer

logs.configure_logging(get_settings().log_format)  # after uvicorn set up its loggers
if tracing.configure_from_environment("jobrunner-api"):
    producer.trace_redis()
app = create_app()
gc.collect()
gc.freeze()
