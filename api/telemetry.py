"""Tracing of the API's requests (FastAPI's OpenTelemetry instrumentation), when tracing is on
(:mod:`jobs.observe.tracing`): each request's span is current while its route runs, so the jobs it
creates store that span's ``traceparent`` and the worker continues the trace."""

from __future__ import annotations

from fastapi import FastAPI

from jobs.observe import tracing

#: Requests not traced: probes and scrapes, which would drown the traces that matter.
UNTRACED_URLS = "/healthz,/metrics"


def install(app: FastAPI) -> None:
    """Trace ``app``'s requests if this process traces; nothing otherwise."""
    if not tracing.enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracing.provider(), excluded_urls=UNTRACED_URLS)
