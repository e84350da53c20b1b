"""The ASGI entry point for uvicorn (``api.main:app``): builds the app from the environment."""

from api.app import create_app
from jobs.config import get_settings
from jobs.observe import logs, tracing
from worker import producer

logs.configure_logging(get_settings().log_format)  # after uvicorn set up its loggers
if tracing.configure_from_environment("jobrunner-api"):
    producer.trace_redis()
app = create_app()
