"""Rendering the dashboard's pages: one Jinja2 environment (templates in package data), the filters
the templates use, and the live-refresh partial (an htmx poll gets only the page's live region)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from api.dashboard import actions, auth, queries
from api.dashboard.auth import Viewer
from jobs import operator_log

HERE = Path(__file__).parent
#: Seconds between two refreshes of an open page (while its tab is visible and live is on).
REFRESH_SECONDS = 3

templates = Jinja2Templates(directory=str(HERE / "templates"))


def _ago(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """``3 s ago``, ``5 min ago``, ``2 h ago``, ``4 d ago`` (``in 12 s`` for the future)."""
    if value is None:
        return "-"
    seconds = ((now or dt.datetime.now(dt.UTC)) - value).total_seconds()
    text = _span(abs(seconds))
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = (end - start).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else _span(seconds)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _query(params: dict[str, Any], **changes: Any) -> str:
    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


templates.env.filters.update(ago=_ago, when=_when, pretty=_pretty)
templates.env.globals.update(
    duration=_duration,
    query=_query,
    statuses=queries.statuses,
    queue_statuses=queries.QUEUE_STATUSES,
    job_actions=actions.JOB_ACTIONS,
    actions_for=actions.actions_for,
    object_actions=actions.object_actions,
    prefix=auth.PREFIX,
    refresh_seconds=REFRESH_SECONDS,
)


def render(request: Request, viewer: Viewer, name: str, status_code: int = 200, **context: Any) -> Response:
    """The page ``name`` for ``viewer``; for a live refresh (htmx polling the live region), only that
    region. A session new to this browser is set as its cookie."""
    partial = request.headers.get("HX-Request") == "true" and request.headers.get("HX-Target") == "live"
    context.update(
        request=request,
        viewer=viewer,
        layout="partial.html" if partial else "base.html",
        now=dt.datetime.now(dt.UTC),
        login_required=auth.login_required(request.app.state.settings),
    )
    context.setdefault("done", _done(request))
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    new_viewer = getattr(request.state, "new_viewer", None)
    if new_viewer is not None:
        auth.write_viewer(request, response, new_viewer)
    return response


def _done(request: Request) -> operator_log.OperatorAction | None:
    """The operator log entry an action redirected back with (``?done=<id>``), to say what it did."""
    done = request.query_params.get("done", "")
    if not done.isdigit():
        return None
    with request.app.state.database.readers() as session:
        entry: operator_log.OperatorAction | None = session.get(operator_log.OperatorAction, int(done))
        return entry
