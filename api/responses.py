"""The error answers a route declares, so the OpenAPI document lists every code it can send."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from api.schemas import ErrorBody

#: What ``Retry-After`` tells a client when the database is unavailable: about how long a restart
#: or a failover takes. The API itself needs no restart: the next request after that gets a fresh
#: connection.
RETRY_AFTER_SECONDS = 2

_DESCRIPTIONS = {
    401: "Missing or wrong bearer token",
    404: "Not found",
    409: "Conflicts with the resource's state",
    413: "Too large",
    422: "Invalid request",
    503: "The database (or, for /healthz, the broker) is unavailable: retry after Retry-After seconds",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route answering ``codes`` with :class:`ErrorBody`."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


def unavailable() -> dict[int | str, dict[str, Any]]:
    """``responses=`` for the 503 every route can answer (the database, or a dependency, is down),
    with its ``Retry-After`` header."""
    retry_after = {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    }
    return {503: {**errors(503)[503], "headers": {"Retry-After": retry_after}}}


def unavailable_answer(detail: str) -> JSONResponse:
    """A 503 saying ``detail``, with ``Retry-After``."""
    return JSONResponse(status_code=503, content={"detail": detail}, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
