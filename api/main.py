"""The ASGI entry point for uvicorn (``api.main:app``): builds the app from the environment."""

from api.app import create_app
from jobs.config import get_settings
from jobs.observe import logs

logs.configure_logging(get_settings().log_format)  # after uvicorn set up its loggers
app = create_app()
