"""OpenTelemetry, when the ``jobrunner[otel]`` extra is installed: the one module that imports it
(guarded), so every other module calls these functions and runs unchanged without it.

Tracing is on in a process once :func:`configure_from_environment` found it asked for by the
standard ``OTEL_*`` variables (an exporter or an OTLP endpoint named, ``OTEL_SDK_DISABLED`` not
``true``), or once a test passed its own provider to :func:`use_provider`. Then a job created under
a span stores that span's W3C ``traceparent`` (:mod:`jobs.observe.tracecontext`), and the worker
starts the job's span from it. This module imports no web or queue framework: FastAPI's and Redis'
instrumentation are set up by ``api.telemetry`` and ``worker.producer``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from jobs.observe import tracecontext

try:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
except ImportError:  # the extra is not installed: tracing stays off
    trace = None  # type: ignore[assignment]

#: The instrumentation scope of the runner's own spans.
TRACER_NAME = "jobrunner"

_provider: Any = None


def installed() -> bool:
    """Whether the OpenTelemetry SDK is importable (the ``jobrunner[otel]`` extra)."""
    return trace is not None


def enabled() -> bool:
    """Whether this process traces."""
    return _provider is not None


def provider() -> Any:
    """The tracer provider this process traces with (None: off)."""
    return _provider


def _asked_for(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    names = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(environ.get(name) for name in names)


def configure_from_environment(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Trace this process if the ``OTEL_*`` variables ask for it and the extra is installed: a
    tracer provider with a batch processor and the exporter ``OTEL_TRACES_EXPORTER`` names (``otlp``,
    the default, over HTTP; or ``console``), SQLAlchemy and psycopg instrumented. The SDK reads the
    rest (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
    ``OTEL_EXPORTER_OTLP_*``, ``OTEL_BSP_*``). Returns whether tracing is on."""
    if not installed() or not _asked_for(environ) or enabled():
        return enabled()
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or service_name})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(_exporter(environ)))
    use_provider(tracer_provider)
    trace.set_tracer_provider(tracer_provider)
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(tracer_provider=tracer_provider)
    PsycopgInstrumentor().instrument(tracer_provider=tracer_provider)
    return True


def _exporter(environ: Mapping[str, str]) -> SpanExporter:
    name = environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip().lower()
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def use_provider(tracer_provider: Any) -> None:
    """Trace with ``tracer_provider`` from now on (None: stop), and store the current span's
    context on the jobs created meanwhile."""
    global _provider
    _provider = tracer_provider
    tracecontext.set_capture(current_traceparent if tracer_provider is not None else None)


def tracer() -> Any:
    """The runner's tracer (only while :func:`enabled`)."""
    return _provider.get_tracer(TRACER_NAME)


def current_traceparent() -> str | None:
    """The current span's W3C ``traceparent`` header value, or None when no span is current."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> Context | None:
    """The remote span context a stored ``traceparent`` names (None if none or unreadable)."""
    if not traceparent:
        return None
    context = propagate.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    return context if span_context.is_valid else None


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A child span of the current one, current inside the block (nothing when tracing is off)."""
    if not enabled():
        yield None
        return
    with tracer().start_as_current_span(name, attributes=attributes) as current:
        yield current


class JobSpan:
    """A job attempt's span: the child of the span that created the job (its stored
    ``traceparent``) for the first attempt of the first run; for a retry or a replay, the root of a
    trace of its own with a link to that first one. It starts when the claim did, with a ``claim``
    child span; :meth:`step` adds the ``handler`` and ``commit`` spans; :meth:`end` records the outcome."""

    def __init__(self, job: Any, *, claim_started_ns: int, claim_ended_ns: int) -> None:
        parent = context_of(job.trace_parent)
        links = []
        if parent is not None and (job.attempt > 1 or job.run > 0):
            links = [trace.Link(trace.get_current_span(parent).get_span_context())]
            parent = Context()
        self.span = tracer().start_span(
            f"job {job.kind}",
            context=parent if parent is not None else Context(),
            kind=trace.SpanKind.CONSUMER,
            links=links,
            start_time=claim_started_ns,
            attributes={
                "jobrunner.job.id": str(job.id),
                "jobrunner.job.kind": job.kind,
                "jobrunner.job.queue": job.queue,
                "jobrunner.job.attempt": job.attempt,
                "jobrunner.job.run": job.run,
            },
        )
        self._context = trace.set_span_in_context(self.span)
        claim = tracer().start_span("claim", context=self._context, start_time=claim_started_ns)
        claim.end(end_time=claim_ended_ns)

    @property
    def trace_id(self) -> str:
        """The span's trace ID, in hex (as log lines show it)."""
        return f"{self.span.get_span_context().trace_id:032x}"

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A child span of the job's, current inside the block (so jobs created there store it)."""
        with tracer().start_as_current_span(name, context=self._context):
            yield

    def end(self, outcome: str) -> None:
        """Record ``outcome`` (an attempt outcome, or ``claim_lost``) and end the span."""
        self.span.set_attribute("jobrunner.job.outcome", outcome)
        if outcome not in ("succeeded", "interrupted"):
            self.span.set_status(trace.StatusCode.ERROR, outcome)
        self.span.end()


def start_job_span(job: Any, *, claim_started_ns: int, claim_ended_ns: int) -> JobSpan | None:
    """The span of the claimed ``job`` (a ``RunningJob``), or None when tracing is off."""
    if not enabled():
        return None
    return JobSpan(job, claim_started_ns=claim_started_ns, claim_ended_ns=claim_ended_ns)


@contextmanager
def job_step(job_span: JobSpan | None, name: str) -> Iterator[None]:
    """:meth:`JobSpan.step`, or nothing without a span."""
    if job_span is None:
        yield
        return
    with job_span.step(name):
        yield
