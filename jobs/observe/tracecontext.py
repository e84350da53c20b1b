"""The trace context a new job row stores: the W3C ``traceparent`` of the span creating it.

``jobs`` knows no tracing library: the API and the worker, when OpenTelemetry is installed, set
:func:`set_capture` to a function that renders the current span's context, and the store calls
:func:`current` when it creates a job. Without it, jobs store None.
"""

from __future__ import annotations

from collections.abc import Callable

_capture: Callable[[], str | None] | None = None


def set_capture(capture: Callable[[], str | None] | None) -> None:
    """Use ``capture`` (None: nothing) to read the current trace context from now on, process-wide."""
    global _capture
    _capture = capture


def current() -> str | None:
    """The current span's ``traceparent``, or None when no tracing is set up or no span is current."""
    return _capture() if _capture is not None else None
