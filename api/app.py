"""The FastAPI app, built by :func:`create_app`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from api import dashboard, docs, metrics, responses, schemas, telemetry, validation
from api.deps import require_token
from api.guard import RequestGuard
from api.routes import batches as batches_routes
from api.routes import events as events_routes
from api.routes import files as files_routes
from api.routes import health
from api.routes import jobs as jobs_routes
from api.routes import projections as projections_routes
from api.routes import queues as queues_routes
from api.routes import schedules as schedules_routes
from jobs import db, errors, kinds
from jobs.config import Settings, get_settings
from jobs.registry import Registry
from worker import producer

logger = logging.getLogger(__name__)

#: Connections in the API process's pool.
POOL_SIZE = 10
#: The HTTP status of each kind of domain error; any other ``JobError`` is a 400.
ERROR_STATUS: dict[type[errors.JobError], int] = {
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Invalid: 422,
    errors.TooLarge: 413,
}

#: Database errors that mean "not now" rather than "bad request" or "bug": the server refuses
#: connections, is shutting down, has no connection slot left, cancelled a statement (a timeout), or
#: the pool has no connection to give. The API answers them 503 with ``Retry-After``; the engine
#: drops the broken connections (and ``pool_pre_ping`` the stale ones), so once the database is
#: back the next request gets a working connection.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


def create_app(settings: Settings | None = None, kind_registry: Registry | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: the environment's) and the job kinds of
    ``kind_registry`` (default: :func:`jobs.kinds.load_registry`); the engine and the broker
    connection are made in its lifespan."""
    settings = settings or get_settings()
    kind_registry = kind_registry or kinds.load_registry(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker = producer.make_broker(settings)
        app.state.settings = settings
        app.state.broker = broker
        # POST /jobs runs its unit of work in at most as many threads as the pool has connections:
        # more would open (and close again) overflow connections under load.
        app.state.write_threads = anyio.CapacityLimiter(POOL_SIZE)
        app.state.database = db.make_database(
            settings.database_url,
            pool_size=POOL_SIZE,
            sender=producer.make_sender(broker),
            registry=kind_registry,
            application_name="jobrunner-api",
        )
        try:
            yield
        finally:
            app.state.database.dispose()
            broker.close()

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = exc.errors()
        detail = schemas.unknown_kind_message(problems, kind_registry) or validation.safe_errors(problems)
        return validation.SafeJSONResponse(status_code=422, content={"detail": detail})

    # Every route can find the database down: each lists the 503 (a route's own 503 takes precedence).
    app = FastAPI(
        title="jobrunner",
        version="0.1.0",
        lifespan=lifespan,
        responses=responses.unavailable(),
        **telemetry.fastapi_options(),
        docs_url=None,  # served without a CDN by api.docs
        redoc_url=None,
    )
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(errors.JobError, _job_error)
    app.add_exception_handler(sa_exc.DataError, _data_error)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(sa_exc.DBAPIError, _other_database_error)
    app.include_router(health.router)
    app.include_router(jobs_routes.make_post_router(kind_registry), dependencies=[Depends(require_token)])
    app.include_router(jobs_routes.router, dependencies=[Depends(require_token)])
    app.include_router(events_routes.router, dependencies=[Depends(require_token)])
    app.include_router(projections_routes.router, dependencies=[Depends(require_token)])
    app.include_router(files_routes.router, dependencies=[Depends(require_token)])
    app.include_router(batches_routes.router, dependencies=[Depends(require_token)])
    app.include_router(queues_routes.router, dependencies=[Depends(require_token)])
    app.include_router(schedules_routes.router, dependencies=[Depends(require_token)])
    metrics.install(app)
    docs.install(app)
    dashboard.install(app)
    _guard(app, settings)
    telemetry.install(app)
    return app


def _guard(app: FastAPI, settings: Settings) -> None:
    """Authenticate and bound the body before any route runs (:class:`api.guard.RequestGuard`); the
    routes that take a JSON body declare the 413 it answers (in the OpenAPI document, where it is built)."""
    streamed = {("POST", "/files")}  # streams its upload itself, bounded by max_upload_bytes
    open_paths = {"/healthz", app.openapi_url, *docs.PATHS, dashboard.PREFIX}
    if settings.metrics_token is not None:
        open_paths.add(metrics.PATH)  # its route accepts the metrics token (or the API token)
    app.add_middleware(
        RequestGuard,
        token=settings.api_token,
        max_body_bytes=settings.max_body_bytes,
        open_paths={path for path in open_paths if path},
        # The dashboard asks for the token at its own login (api.dashboard.auth).
        open_prefixes=(f"{docs.ASSETS_URL}/", f"{dashboard.PREFIX}/"),
        streamed=streamed,
    )
    build_openapi = app.openapi

    def openapi_with_413() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build_openapi()  # also kept in app.openapi_schema, which is amended here
            too_large = {
                "description": "The body is larger than JOBRUNNER_MAX_BODY_BYTES",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            }
            for operations in document["paths"].values():
                for operation in operations.values():
                    if "application/json" in operation.get("requestBody", {}).get("content", {}):
                        operation["responses"].setdefault("413", too_large)
        return app.openapi_schema or build_openapi()

    app.openapi = openapi_with_413  # type: ignore[method-assign]


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # A value the database cannot store (PostgreSQL refuses NUL characters in text and JSON, for
    # one) is bad input, not a server fault. The request's session is rolled back by its dependency.
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    detail = f"the database refused a value: {validation.safe_text(reason)}"
    return validation.SafeJSONResponse(status_code=422, content={"detail": detail})


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The driver's error class (connection refused, AdminShutdown, TooManyConnections,
    # QueryCanceled...) says enough; its message may hold host names, so it stays in the server's log.
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    logger.warning("database unavailable for %s %s: %s", request.method, request.url.path, cause)
    return responses.unavailable_answer(f"database unavailable ({type(cause).__name__}); retry later")


async def _other_database_error(request: Request, exc: Exception) -> JSONResponse:
    # Any other driver error on a connection that broke under it (SQLAlchemy then invalidated the
    # connection, so it is not handed out again) is an outage too; the rest (IntegrityError,
    # ProgrammingError) are faults of the server's own, left to the 500 handler.
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return await _database_unavailable(request, exc)
    raise exc


async def _job_error(request: Request, exc: Exception) -> JSONResponse:
    code = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 400)
    return validation.SafeJSONResponse(status_code=code, content={"detail": validation.safe_text(str(exc), 1000)})
