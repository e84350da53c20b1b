"""``GET /metrics``: the whole fleet's numbers, read from the database at scrape time, and this API
process's own HTTP metrics, in one Prometheus text document.

The fleet's numbers come from :class:`FleetCollector`, a prometheus-client custom collector whose
``collect()`` runs a handful of cheap queries (:mod:`jobs.observe.fleet`): no process keeps fleet
state, so any API process answers for every worker and every other API process, and the counters
(kept in the database in the transactions that record each outcome) never go down when a process
restarts. The HTTP metrics are prometheus-fastapi-instrumentator's, in the same registry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from sqlalchemy import Connection
from starlette.middleware import Middleware

from api import responses
from api.deps import token_matches
from jobs import db, store
from jobs.config import Settings
from jobs.kinds import progress
from jobs.models import TERMINAL, AttemptOutcome, JobStatus
from jobs.observe import counting, fleet
from jobs.observe.models import DURATION_BUCKETS_SECONDS, NO_DURATION

PATH = "/metrics"
#: A worker process whose last beat is older than this many leases counts as gone.
ALIVE_LEASES = 3
#: Attempt outcomes that finish a job (those named like a terminal job state).
FINISHING = tuple(outcome for outcome in AttemptOutcome if outcome.value in {status.value for status in TERMINAL})

_bearer = HTTPBearer(auto_error=False, description="JOBRUNNER_METRICS_TOKEN (or JOBRUNNER_API_TOKEN) when set.")


class FleetCollector(Collector):
    """Reads the fleet's numbers from the database on each scrape (see the module doc)."""

    def __init__(self, app: FastAPI) -> None:
        #: The app whose lifespan builds the database (the collector is registered before it starts).
        self.app = app

    def collect(self) -> Iterator[Metric]:
        database: db.Database = self.app.state.database
        settings: Settings = self.app.state.settings
        now = store.utcnow()
        with database.readers() as session:
            conn = session.connection()
            yield from _job_gauges(conn, now, lease_seconds=settings.lease_seconds)
            yield from _attempt_metrics(fleet.attempt_counts(conn))
            resends = CounterMetricFamily("jobrunner_sweeper_resends", "Jobs the sweeper sent again (message lost).")
            resends.add_metric([], fleet.named_counters(conn).get(counting.SWEEPER_RESENDS, 0))
            yield resends
            yield from _progress_gauges(progress.open_batches(conn), progress.open_files(conn))


def _job_gauges(conn: Connection, now: dt.datetime, *, lease_seconds: float) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "jobrunner_jobs", "Jobs not finished, by queue, kind and state.", labels=["queue", "kind", "status"]
    )
    groups = fleet.unfinished_jobs(conn, now=now)
    counts: dict[tuple[str, str], dict[str, int]] = {}
    oldest: dict[str, dt.datetime] = {}
    running = expired = 0
    for group in groups:
        counts.setdefault((group.queue, group.kind), {})[group.status] = group.count
        if group.queued_since is not None:
            oldest[group.queue] = min(oldest.get(group.queue, group.queued_since), group.queued_since)
        if group.status == JobStatus.RUNNING:
            running += group.count
            expired += group.expired
    for (queue, kind), by_state in sorted(counts.items()):
        for state in fleet.UNFINISHED:  # every state, 0 included, so a series does not vanish
            jobs.add_metric([queue, kind, state.value], by_state.get(state.value, 0))
    yield jobs
    age = GaugeMetricFamily(
        "jobrunner_queue_oldest_queued_age_seconds",
        "How long the longest-waiting queued job of each queue has waited.",
        labels=["queue"],
    )
    for queue, since in sorted(oldest.items()):
        age.add_metric([queue], max((now - since).total_seconds(), 0.0))
    yield age
    yield GaugeMetricFamily("jobrunner_jobs_running", "Jobs running now.", value=running)
    yield GaugeMetricFamily(
        "jobrunner_leases_expired", "Running jobs whose lease expired (their worker died or stalled).", value=expired
    )
    since = now - dt.timedelta(seconds=ALIVE_LEASES * lease_seconds)
    alive, newest = fleet.worker_beats(conn, since=since)
    yield GaugeMetricFamily("jobrunner_workers_alive", "Worker processes with a recent heartbeat.", value=alive)
    last = GaugeMetricFamily(
        "jobrunner_worker_last_heartbeat_timestamp_seconds", "Unix time of the newest heartbeat of any worker."
    )
    if newest is not None:
        last.add_metric([], newest.timestamp())
    yield last


def _attempt_metrics(counts: Iterable[fleet.AttemptCount]) -> Iterator[Metric]:
    attempts = CounterMetricFamily(
        "jobrunner_attempts", "Attempts ended, by kind and outcome.", labels=["kind", "outcome"]
    )
    finished = CounterMetricFamily(
        "jobrunner_jobs_finished", "Jobs finished, by kind and outcome.", labels=["kind", "outcome"]
    )
    retries = CounterMetricFamily("jobrunner_retries", "Attempts that failed and will be retried.", labels=["kind"])
    lost = CounterMetricFamily("jobrunner_workers_lost", "Attempts whose worker died.", labels=["kind"])
    quarantined = CounterMetricFamily(
        "jobrunner_jobs_quarantined", "Jobs failed because their worker died (WorkerLost).", labels=["kind"]
    )
    replayed = CounterMetricFamily("jobrunner_jobs_replayed", "Failed jobs replayed.", labels=["kind"])
    by_outcome: dict[str, dict[str, int]] = {}
    kind_totals: dict[str, dict[str, int]] = {}
    buckets: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    for c in counts:
        by_outcome.setdefault(c.kind, {}).setdefault(c.outcome, 0)
        by_outcome[c.kind][c.outcome] += c.count
        totals = kind_totals.setdefault(c.kind, {"lost": 0, "quarantined": 0})
        if c.worker_lost:
            totals["lost"] += c.count
            totals["quarantined"] += c.count if c.outcome == AttemptOutcome.FAILED else 0
        if c.bucket != NO_DURATION:
            buckets.setdefault(c.kind, [0] * (len(DURATION_BUCKETS_SECONDS) + 1))[c.bucket] += c.count
            seconds[c.kind] = seconds.get(c.kind, 0.0) + c.seconds
    for kind, outcomes in sorted(by_outcome.items()):
        for outcome in AttemptOutcome:
            attempts.add_metric([kind, outcome.value], outcomes.get(outcome.value, 0))
        for outcome in FINISHING:
            finished.add_metric([kind, outcome.value], outcomes.get(outcome.value, 0))
        retries.add_metric([kind], outcomes.get(AttemptOutcome.ERROR.value, 0))
        replayed.add_metric([kind], outcomes.get(AttemptOutcome.REPLAYED.value, 0))
        lost.add_metric([kind], kind_totals[kind]["lost"])
        quarantined.add_metric([kind], kind_totals[kind]["quarantined"])
    yield from (attempts, finished, retries, lost, quarantined, replayed)
    durations = HistogramMetricFamily(
        "jobrunner_attempt_duration_seconds", "How long attempts ran, by kind.", labels=["kind"]
    )
    for kind, counted in sorted(buckets.items()):
        cumulative, running = [], 0
        for bound, count in zip([*DURATION_BUCKETS_SECONDS, float("inf")], counted, strict=True):
            running += count
            cumulative.append((_le(bound), running))
        durations.add_metric([kind], cumulative, sum_value=seconds[kind])
    yield durations


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _progress_gauges(batches: progress.Progress, files: progress.Progress) -> Iterator[Metric]:
    yield GaugeMetricFamily("jobrunner_batches_open", "Batches planning or running.", value=batches.open)
    records = GaugeMetricFamily(
        "jobrunner_batch_records", "Records of the open batches, by count (total, processed, failed).", labels=["count"]
    )
    for name, value in batches.totals.items():
        records.add_metric([name], value)
    yield records
    yield GaugeMetricFamily("jobrunner_files_open", "Files pending or importing.", value=files.open)
    file_totals = GaugeMetricFamily(
        "jobrunner_file_progress",
        "Open files' sizes and progress, by count (size_bytes, byte_offset, rows_imported, rows_rejected).",
        labels=["count"],
    )
    for name, value in files.totals.items():
        file_totals.add_metric([name], value)
    yield file_totals


def _require_metrics_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless the request carries the metrics token or the API token (open when neither is set)."""
    settings: Settings = request.app.state.settings
    accepted = [token for token in (settings.metrics_token, settings.api_token) if token is not None]
    if not accepted:
        return
    given = credentials.credentials if credentials is not None else ""
    if not any(token_matches(given, token) for token in accepted):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


class _HandlerCache(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware, with the route template of each method and path looked up
    once. Its lookup walks every route of the app on each request, and FastAPI's included routers
    rebuild each of their routes for that walk: about a tenth of the CPU of a ``POST /jobs``. The
    routes never change once the app is built; the cache is bounded (emptied when full)."""

    #: Most (method, path) pairs kept (paths with IDs in them are each a pair).
    MAX_ENTRIES = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handlers: dict[tuple[str, str, str], tuple[str, bool]] = {}

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        scope = request.scope
        key = (scope["method"], scope.get("root_path", ""), scope["path"])
        found = self._handlers.get(key)
        if found is None:
            if len(self._handlers) >= self.MAX_ENTRIES:
                self._handlers.clear()
            found = self._handlers[key] = super()._get_handler(request)
        return found


def install(app: FastAPI) -> None:
    """Serve ``GET /metrics`` on ``app`` and count its HTTP requests (by route template)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(app))
    Instrumentator(registry=registry, excluded_handlers=[PATH]).instrument(app)
    # instrument() adds its middleware class to the app's list (the stack is built at the first
    # request): the same middleware with its lookups cached takes its place.
    app.user_middleware = [
        Middleware(_HandlerCache, *m.args, **m.kwargs) if m.cls is PrometheusInstrumentatorMiddleware else m  # type: ignore[comparison-overlap]
        for m in app.user_middleware
    ]
    router = APIRouter(tags=["metrics"])

    @router.get(
        PATH,
        response_class=Response,
        dependencies=[Depends(_require_metrics_token)],
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
            **responses.errors(401),
        },
    )
    def metrics() -> Response:
        """The fleet's metrics and this API process's HTTP metrics, in Prometheus text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
