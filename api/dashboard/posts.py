"""The dashboard's POSTs: log in and out, and the actions (see :mod:`api.dashboard.actions`).

An action is two POSTs: ``.../preview`` counts what it would touch and shows a confirmation form
(with the reason field when the action takes one), which posts to the action itself. Both carry
the CSRF token; the action then runs through the store, is recorded in the operator log, and
redirects to the page it came from with ``?done=<log entry>``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse, Response

from api.dashboard import actions, auth, filters
from api.dashboard.auth import PREFIX
from api.dashboard.rendering import render
from api.deps import get_database
from jobs import db, models, operator_log
from jobs.store import filtering

router = APIRouter()

DatabaseDep = Annotated[db.Database, Depends(get_database)]
#: At most this many jobs can be ticked one by one (more: act on the filter).
MAX_SELECTION = 1000


class JobActionForm(BaseModel):
    """The form of a job action: the jobs (ticked ones, or every one matching the filter), why, and
    where to go back to."""

    csrf: str = ""
    #: "selection" (the ticked ``job_id``\\ s) or "filter" (every job matching the filter fields).
    scope: str = "selection"
    job_id: list[uuid.UUID] = Field(default_factory=list, max_length=MAX_SELECTION)
    status: str = ""
    kind: str = ""
    queue: str = ""
    since: str = ""
    until: str = ""
    error_type: str = ""
    error: str = ""
    batch: str = ""
    reason: str = Field(default="", max_length=1000)
    next: str = ""


class ObjectActionForm(BaseModel):
    """The form of an action on a batch, a queue or a schedule."""

    csrf: str = ""
    reason: str = Field(default="", max_length=1000)
    next: str = ""


def _back(next_url: str, entry: operator_log.OperatorAction | None = None) -> RedirectResponse:
    # Only back into the dashboard: a form cannot send the browser elsewhere.
    target = next_url if next_url.startswith(f"{PREFIX}/") and "//" not in next_url else f"{PREFIX}/"
    if entry is not None:
        target += ("&" if "?" in target else "?") + f"done={entry.id}"
    return RedirectResponse(target, status_code=303)


def _action(name: str) -> actions.JobAction:
    action = actions.JOB_ACTIONS.get(name)
    if action is None:
        raise HTTPException(404, f"no such action: {name}")
    return action


def _selected_count(session: Session, form: JobActionForm, action: actions.JobAction) -> tuple[int, str]:
    """How many jobs the action would change, and what was asked (for the confirmation)."""
    if form.scope == "filter":
        job_filter = filters.parse_filter(form.model_dump(), now=dt.datetime.now(dt.UTC))
        return filtering.count_matching(session, job_filter, action.applies_to), "every job matching the filter"
    statuses = [status.value for status in action.applies_to]
    query = select(models.Job.id).where(models.Job.id.in_(form.job_id), models.Job.status.in_(statuses))
    return len(session.scalars(query).all()), f"{len(set(form.job_id))} selected job(s)"


@router.post("/jobs/actions/{name}/preview")
def preview_job_action(
    name: str, request: Request, form: Annotated[JobActionForm, Form()], database: DatabaseDep
) -> Response:
    """How many jobs the action would change, and a form to confirm it."""
    viewer = auth.operator(request, form.csrf)
    action = _action(name)
    with database.readers() as session:
        count, asked = _selected_count(session, form, action)
    hidden = form.model_dump(exclude={"csrf", "reason", "job_id"})
    if form.scope == "filter":
        job_filter = filters.parse_filter(form.model_dump(), now=dt.datetime.now(dt.UTC))
        hidden.update({field: "" for field in filters.FIELDS}, **filters.filter_params(job_filter))
    return render(
        request,
        viewer,
        "confirm.html",
        live=False,
        label=action.label,
        danger=action.danger,
        takes_reason=action.takes_reason,
        count=count,
        asked=asked,
        states=", ".join(action.applies_to),
        note=action.note,
        post_to=f"{PREFIX}/jobs/actions/{action.name}",
        hidden={key: value for key, value in hidden.items() if value},
        job_ids=form.job_id,
        reason=form.reason,
    )


@router.post("/jobs/actions/{name}")
def run_job_action(
    name: str, request: Request, form: Annotated[JobActionForm, Form()], database: DatabaseDep
) -> Response:
    """Run the action on the selection or on every job matching the filter, in chunks, and record it."""
    viewer = auth.operator(request, form.csrf)
    action = _action(name)
    reason = form.reason.strip() or None
    job_filter = filters.parse_filter(form.model_dump(), now=dt.datetime.now(dt.UTC))
    selected = changed = 0
    for chunk in _chunks(database, form, action, job_filter):
        selected += len(chunk)
        with db.session_scope(database.sessions) as session:
            changed += len(_run_chunk(session, action, chunk, reason, job_filter if form.scope == "filter" else None))
    target = (
        {"filter": filters.filter_params(job_filter)}
        if form.scope == "filter"
        else {"job_ids": [str(i) for i in form.job_id]}
    )
    with db.session_scope(database.sessions) as session:
        entry = operator_log.record_action(
            session,
            actor=viewer.actor(request),
            action=action.name,
            reason=reason,
            target=target,
            selected=selected,
            changed=changed,
        )
    return _back(form.next, entry)


def _chunks(
    database: db.Database, form: JobActionForm, action: actions.JobAction, job_filter: filtering.JobFilter
) -> Iterator[list[uuid.UUID]]:
    if form.scope != "filter":
        ids = list(dict.fromkeys(form.job_id))
        for start in range(0, len(ids), actions.CHUNK):
            yield ids[start : start + actions.CHUNK]
        return
    with database.readers() as session:
        yield from filtering.matching_ids(session, job_filter, action.applies_to, chunk_size=actions.CHUNK)


def _run_chunk(
    session: Session,
    action: actions.JobAction,
    job_ids: list[uuid.UUID],
    reason: str | None,
    job_filter: filtering.JobFilter | None,
) -> list[uuid.UUID]:
    # A filter on a batch goes through the batch's own function when the action has one (a
    # replay reopens the batch, as `jobctl replay --batch` does).
    if job_filter is not None and job_filter.batch is not None and action.run_for_batch is not None:
        return action.run_for_batch(session, job_filter.batch, job_ids, reason)
    return action.run(session, job_ids, reason)


def _object_action(target: str, name: str) -> actions.ObjectAction:
    action = actions.OBJECT_ACTIONS.get((target, name))
    if action is None:
        raise HTTPException(404, f"no such action: {target} {name}")
    return action


# ``key:path``: a schedule's name may hold a slash.
@router.post("/{target}/{key:path}/actions/{name}/preview")
def preview_object_action(
    target: str, key: str, name: str, request: Request, form: Annotated[ObjectActionForm, Form()], database: DatabaseDep
) -> Response:
    """A form to confirm an action on one batch, queue or schedule (with how many jobs it would
    change, when it says)."""
    viewer = auth.operator(request, form.csrf)
    action = _object_action(target, name)
    count = None
    if action.count is not None:
        with database.readers() as session:
            count = action.count(session, key)
    return render(
        request,
        viewer,
        "confirm.html",
        live=False,
        label=action.label,
        danger=action.danger,
        takes_reason=action.takes_reason,
        count=count,
        always=True,  # a batch whose chunks all started can still be cancelled (it ends once they finish)
        asked=f"{target} {key}",
        states="not started",
        post_to=f"{PREFIX}/{target}/{key}/actions/{name}",
        hidden={"next": form.next} if form.next else {},
        job_ids=[],
        reason=form.reason,
    )


@router.post("/{target}/{key:path}/actions/{name}")
def run_object_action(
    target: str, key: str, name: str, request: Request, form: Annotated[ObjectActionForm, Form()], database: DatabaseDep
) -> Response:
    """Run an action on one batch, queue or schedule and record it."""
    viewer = auth.operator(request, form.csrf)
    action = _object_action(target, name)
    reason = form.reason.strip() or None
    with db.session_scope(database.sessions) as session:
        changed = action.run(session, key, reason)
        entry = operator_log.record_action(
            session,
            actor=viewer.actor(request),
            action=f"{target}.{action.name}",
            reason=reason,
            target={target: key},
            selected=1,
            changed=changed,
        )
    return _back(form.next, entry)


@router.get("/login")
def login_page(request: Request, viewer: Annotated[auth.Viewer, Depends(auth.any_viewer)], next: str = "") -> Response:
    """The login form (a token; a name for the operator log)."""
    return render(request, viewer, "login.html", live=False, next=next, error=None)


@router.post("/login")
def log_in(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    token: Annotated[str, Form(max_length=1000)] = "",
    name: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    """Open a session for the token's role; a wrong token: the form again, 401."""
    viewer = auth.poster(request, csrf)
    role = auth.role_for(request.app.state.settings, token)
    if role is None:
        return render(request, viewer, "login.html", status_code=401, live=False, next=next, error="wrong token")
    response = _back(next)
    # A new CSRF token with the new session: one seen before the login is worth nothing after it.
    auth.write_viewer(request, response, auth.Viewer(role=role, name=name.strip(), csrf=auth.new_csrf()))
    return response


@router.post("/logout")
def log_out(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session."""
    auth.poster(request, csrf)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    auth.forget_viewer(response)
    return response
