"""The shipped job kinds, one package (or module) per feature, and the one function that loads
every kind an application runs.

- ``basic``: ``noop``, ``fail`` and ``sleep``.
- ``files``: CSV upload -> ``records`` (``file.process``).
- ``batches``: an operation over many records in parallel chunk jobs (``batch.plan``, ``batch.chunk``).
- ``events``: domain events, the outbox and idempotent handlers (``event.handle``), projections.

Each feature package holds its models, errors, logic (``service``/``outbox``) and job handlers
(``handlers``); the runner's core (``jobs.store``, ``jobs.registry``, ...) knows none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from jobs.config import Settings
from jobs.registry import Registry

#: The modules declaring the shipped kinds and their invariant checks (``@registry.invariant``).
SHIPPED_MODULES = (
    "jobs.kinds.basic",
    "jobs.kinds.files.handlers",
    "jobs.kinds.batches.handlers",
    "jobs.kinds.batches.service",
    "jobs.kinds.events.handlers",
)


def load_registry(settings: Settings, extra_modules: Iterable[str] = ()) -> Registry:
    """The registry of the shipped kinds and those declared in ``settings.job_module_names`` (and
    ``extra_modules``), resolved against ``settings``. The API, the worker and ``jobctl`` each call
    this once at start.

    Raises:
        ModuleNotFoundError: a named module does not exist.
        ValueError: two modules declare the same kind name.
    """
    registry = Registry(settings)
    for name in (*SHIPPED_MODULES, *settings.job_module_names, *extra_modules):
        registry.add_module(importlib.import_module(name))
    return registry
