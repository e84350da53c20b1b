"""The shipped job kinds; importing this package registers them."""

from jobs.handlers import basic  # noqa: F401
from jobs.handlers import batches  # noqa: F401
from jobs.handlers import events  # noqa: F401
from jobs.handlers import files  # noqa: F401
