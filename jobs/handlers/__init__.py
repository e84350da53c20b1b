"""The shipped job kinds; importing this package registers them."""

from jobs.handlers import basic  # noqa: F401
