"""Tracing of the API's requests (FastAPI's OpenTelemetry instrumentation), when tracing is on
(:mod:`jobs.observe.tracing`): each request's span is current while its route runs, so the jobs it
creates store that span's ``traceparent`` and the worker continues the trace."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI

from jobs.observe import tracing

#: Requests not traced: probes and scrapes, which would drown the traces that matter.
UNTRACED_URLS = "/healthz,/metrics"


def fastapi_options() -> dict[str, Any]:
    """Options for ``FastAPI(...)``: when this process traces and FastAPI has tracing of its own
    (its ``telemetry`` option, in recent versions), that tracing is turned off, so each request has
    one server span (the instrumentation's)."""
    if tracing.enabled() and "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False}}
    return {}


def install(app: FastAPI) -> None:
    """Trace ``app``'s requests if this process traces; nothing otherwise."""
    if not tracing.enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracing.provider(), excluded_urls=UNTRACED_URLS)
