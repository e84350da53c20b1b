"""The FastAPI app, built by :func:`create_app`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from api.deps import require_token
from api.routes import health, jobs as jobs_routes
from api.routes import events as events_routes, projections as projections_routes
from api.routes import batches as batches_routes
from api.routes import files as files_routes
from jobs import db, errors, registry
from jobs.config import Settings, get_settings
from worker import broker as worker_broker
from worker import sender

#: The HTTP status of each domain error; anything else from ``jobs`` is a 400.
ERROR_STATUS = {
    errors.JobNotFound: 404,
    errors.JobNotReplayable: 409,
    errors.UnknownJobKind: 422,
    errors.JobKindNotPublic: 422,
    errors.InvalidJobArgs: 422,
    errors.InvalidCursor: 422,
    errors.EventNotFound: 404,
    errors.ProductNotFound: 404,
    errors.DuplicateSku: 409,
    errors.UnknownEventType: 422,
    errors.InvalidEvent: 422,
    errors.FileNotFound: 404,
    errors.UploadTooLarge: 413,
    errors.InvalidUpload: 422,
    errors.UnknownOperation: 422,
    errors.InvalidBatch: 422,
    errors.FileNotProcessed: 409,
    errors.BatchNotFound: 404,
    errors.BatchNotCancellable: 409,
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; the engine and the broker connection are made in its lifespan."""
    settings = settings or get_settings()
    registry.load_kinds(settings.job_module_names)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker = worker_broker.make_broker(settings)
        app.state.settings = settings
        app.state.broker = broker
        app.state.database = db.make_database(
            settings.database_url, pool_size=10, sender=sender.make_sender(broker), application_name="jobrunner-api"
        )
        try:
            yield
        finally:
            app.state.database.dispose()
            broker.close()

    app = FastAPI(title="jobrunner", version="0.1.0", lifespan=lifespan)
    app.add_exception_handler(errors.JobError, _job_error)
    app.add_exception_handler(sa_exc.DataError, _data_error)
    app.include_router(health.router)
    app.include_router(jobs_routes.make_post_router(), dependencies=[Depends(require_token)])
    app.include_router(jobs_routes.router, dependencies=[Depends(require_token)])
    app.include_router(events_routes.router, dependencies=[Depends(require_token)])
    app.include_router(projections_routes.router, dependencies=[Depends(require_token)])
    app.include_router(files_routes.router, dependencies=[Depends(require_token)])
    app.include_router(batches_routes.router, dependencies=[Depends(require_token)])
    return app


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # A value the database cannot store (PostgreSQL refuses NUL characters in text and JSON, for
    # one) is bad input, not a server fault. The request's session is rolled back by its dependency.
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    return JSONResponse(status_code=422, content={"detail": f"the database refused a value: {reason}"})


async def _job_error(request: Request, exc: Exception) -> JSONResponse:
    code = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 400)
    return JSONResponse(status_code=code, content={"detail": str(exc)})
