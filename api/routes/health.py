"""``/healthz``: whether the database and the broker answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from api import responses, schemas
from api.deps import get_database
from jobs import db
from worker import producer

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=schemas.Health, responses=responses.unavailable())
def healthz(request: Request, database: Annotated[db.Database, Depends(get_database)]) -> schemas.Health | JSONResponse:
    """200 when the database and the broker answer; 503 saying which does not."""
    problems = check(request, database)
    if problems:
        return responses.unavailable_answer("; ".join(problems))
    return schemas.Health(database="ok", broker="ok")


def check(request: Request, database: db.Database) -> list[str]:
    """What does not answer: the database, the broker (empty: both do). The dashboard shows it too."""
    problems = []
    try:
        with database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except sa_exc.SQLAlchemyError as exc:
        # A driver's error (DBAPIError) names its cause in .orig; others (a pool timeout) have none.
        cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) else None
        problems.append(f"database unreachable: {type(cause or exc).__name__}")
    try:
        producer.check_broker(request.app.state.settings, request.app.state.broker)
    except producer.BrokerUnreachable as exc:
        problems.append(f"broker unreachable: {exc}")
    return problems
