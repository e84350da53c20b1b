"""The error answers a route declares, so the OpenAPI document lists every code it can send."""

from __future__ import annotations

from typing import Any

from api.schemas import ErrorBody

_DESCRIPTIONS = {
    401: "Missing or wrong bearer token",
    404: "Not found",
    409: "Conflicts with the resource's state",
    413: "Too large",
    422: "Invalid request",
    503: "A dependency is unavailable",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route answering ``codes`` with :class:`ErrorBody`."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}
