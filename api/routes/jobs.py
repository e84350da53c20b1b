"""``/jobs``: post, read, list and replay jobs.

No ``from __future__ import annotations`` here: the body type of ``POST /jobs`` is built at app
creation, and FastAPI must see the real type, not a string naming a local variable.
"""

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, status

from api import schemas
from api.deps import ReadSessionDep, SessionDep
from api.responses import errors
from jobs import store, views
from jobs.models import JobStatus
from jobs.registry import Registry

router = APIRouter(prefix="/jobs", tags=["jobs"])


def make_post_router(kind_registry: Registry) -> APIRouter:
    """``POST /jobs`` for the public kinds of ``kind_registry`` (the body's schema lists each of them)."""
    post_router = APIRouter(prefix="/jobs", tags=["jobs"])
    JobRequest = schemas.job_request_model([kind for kind in kind_registry.all() if kind.public])

    @post_router.post(
        "",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=schemas.JobAccepted,
        responses=errors(401, 422),
    )
    # JobRequest is a type built at run time, for FastAPI: mypy cannot follow it (hence the ignore);
    # the body is read through schemas.JobRequestBody.
    def post_job(request: Annotated[JobRequest, Body()], session: SessionDep) -> schemas.JobAccepted:  # type: ignore[valid-type]
        """Store a job of a public kind; its ID goes to the workers once it is committed."""
        body: schemas.JobRequestBody = request
        args = body.args if isinstance(body.args, dict) else body.args.model_dump(mode="json")
        job = store.create_job(session, body.kind, args, public_only=True)
        session.commit()
        return schemas.JobAccepted(job_id=job.id, status=job.status)

    return post_router


@router.get("", response_model=schemas.JobPage, responses=errors(401, 422))
def list_jobs(
    session: ReadSessionDep,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> schemas.JobPage:
    """Jobs newest first, filtered by status and kind, a page at a time."""
    jobs, next_cursor = store.list_jobs(session, status=job_status, kind=kind, limit=limit, cursor=cursor)
    return schemas.JobPage(items=[schemas.JobSummary.model_validate(job) for job in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=schemas.JobOut, responses=errors(401, 404, 422))
def get_job(job_id: uuid.UUID, session: ReadSessionDep) -> schemas.JobOut:
    """A job with its attempt history."""
    return views.job_out(session, job_id)


@router.post(
    "/{job_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.JobAccepted,
    responses=errors(401, 404, 409, 422),
)
def replay_job(
    job_id: uuid.UUID,
    session: SessionDep,
    request: Annotated[schemas.ReplayRequest | None, Body()] = None,
) -> schemas.JobAccepted:
    """Put a failed job back to queued for a new run (its history is kept)."""
    job = store.replay_job(session, job_id, reason=request.reason if request else None)
    session.commit()
    return schemas.JobAccepted(job_id=job.id, status=job.status)
