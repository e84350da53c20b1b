"""Dependencies: the request's session, the optional bearer token."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from sqlalchemy.orm import Session

from jobs import db

_bearer = HTTPBearer(auto_error=False, description="Needed when JOBRUNNER_API_TOKEN is set.")


async def get_database(request: Request) -> db.Database:
    """The app's database (built by the lifespan). ``async``, as every dependency that does no I/O:
    FastAPI runs a plain ``def`` dependency in a worker thread, a hand-off per request each."""
    database: db.Database = request.app.state.database
    return database


def get_session(database: Annotated[db.Database, Depends(get_database)]) -> Iterator[Session]:
    """One session per request: routes commit it themselves, before they answer (then the job IDs
    go to the broker); whatever is left uncommitted is rolled back when it closes."""
    with database.sessions() as session:
        yield session


def get_read_session(database: Annotated[db.Database, Depends(get_database)]) -> Iterator[Session]:
    """A session for a route that only reads (on SQLite it never waits behind a long write)."""
    with database.readers() as session:
        yield session


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Refuse the request (401) unless it carries the configured token; open when none is set.

    :class:`api.guard.RequestGuard` already refused such a request before its body was read; this
    dependency declares the bearer scheme in the OpenAPI document (and checks again)."""
    expected = request.app.state.settings.api_token
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not token_matches(given, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def token_matches(given: str, expected: SecretStr) -> bool:
    """Whether ``given`` is the configured token."""
    # compare_digest takes time independent of where the strings differ.
    return secrets.compare_digest(given.encode(), expected.get_secret_value().encode())


SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
