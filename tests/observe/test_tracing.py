"""Traces from the request to the job: the worker's job span continues the trace of the request
that created the job (spans exported with the SDK's in-memory exporter; an in-process worker)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from jobs import db, models
from jobs.observe import tracing

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the jobrunner[otel] extra is not installed")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Trace this process into memory for the test (the API and the in-process worker)."""
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)
    provider.shutdown()


@pytest.fixture
def traced_client(spans, settings, database) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:  # built while tracing is on: instrumented
        yield client


def _post(client: TestClient, kind: str, args: dict) -> uuid.UUID:
    answer = client.post("/jobs", json={"kind": kind, "args": args})
    assert answer.status_code == 202, answer.text
    return uuid.UUID(answer.json()["job_id"])


def _job_spans(spans: InMemorySpanExporter, job_id: uuid.UUID) -> list:
    found = [s for s in spans.get_finished_spans() if s.attributes.get("jobrunner.job.id") == str(job_id)]
    return sorted(found, key=lambda s: s.start_time)


def _request_span(spans: InMemorySpanExporter, route: str):
    (request,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER and s.name == route]
    return request


def test_the_job_span_is_a_child_of_the_request_span(spans, traced_client, database, drain):
    job_id = _post(traced_client, "noop", {})
    drain()
    request = _request_span(spans, "POST /jobs")
    with database.readers() as session:
        stored = session.get(models.Job, job_id).trace_parent
    assert stored.split("-")[1:3] == [f"{request.context.trace_id:032x}", f"{request.context.span_id:016x}"]

    (job,) = _job_spans(spans, job_id)
    assert job.name == "job noop" and job.kind == SpanKind.CONSUMER
    assert job.parent is not None and job.parent.span_id == request.context.span_id
    assert job.context.trace_id == request.context.trace_id
    assert dict(job.attributes) == {
        "jobrunner.job.id": str(job_id),
        "jobrunner.job.kind": "noop",
        "jobrunner.job.queue": "default",
        "jobrunner.job.attempt": 1,
        "jobrunner.job.run": 0,
        "jobrunner.job.outcome": "succeeded",
    }
    steps = [s for s in spans.get_finished_spans() if s.parent is not None and s.parent.span_id == job.context.span_id]
    assert sorted(s.name for s in steps) == ["claim", "commit", "handler"]
    assert job.start_time <= min(s.start_time for s in steps)


def test_a_retried_or_replayed_job_links_to_its_first_trace(spans, traced_client, drain):
    job_id = _post(traced_client, "fail", {"permanent": True})
    drain()
    assert traced_client.post(f"/jobs/{job_id}/replay", json={"reason": "again"}).status_code == 202
    flaky = _post(traced_client, "fail", {"fail_times": 1})
    drain()
    first_request = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER and s.name == "POST /jobs"][0]

    first, replayed = _job_spans(spans, job_id)
    assert first.parent.span_id == first_request.context.span_id
    assert first.attributes["jobrunner.job.outcome"] == "failed" and not first.status.is_ok
    assert replayed.parent is None and replayed.context.trace_id != first_request.context.trace_id
    assert [link.context.span_id for link in replayed.links] == [first_request.context.span_id]
    assert replayed.attributes["jobrunner.job.run"] == 1

    error, retried = _job_spans(spans, flaky)
    assert error.attributes["jobrunner.job.outcome"] == "error"
    assert (
        retried.attributes["jobrunner.job.attempt"] == 2 and retried.attributes["jobrunner.job.outcome"] == "succeeded"
    )
    assert retried.parent is None and [link.context.trace_id for link in retried.links] == [error.context.trace_id]


def test_jobs_store_no_trace_context_when_tracing_is_off(client, make_job, database):
    with db.session_scope(database.sessions) as session:
        assert session.get(models.Job, make_job("noop")).trace_parent is None
