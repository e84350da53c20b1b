"""``/jobs``: post, read, list and replay jobs.

No ``from __future__ import annotations`` here: the body type of ``POST /jobs`` is built at app
creation, and FastAPI must see the real type, not a string naming a local variable.
"""

import dataclasses
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response, status
from sqlalchemy.orm import Session

from api import schemas
from api.deps import ReadSessionDep, SessionDep, get_database
from api.responses import errors
from jobs import db, idempotency, store, views
from jobs.models import JobStatus
from jobs.registry import Registry

router = APIRouter(prefix="/jobs", tags=["jobs"])


@dataclasses.dataclass(frozen=True)
class Once:
    """A request's ``Idempotency-Key`` (None: none given) and how long its answer is kept."""

    key: str | None
    ttl_seconds: float

    def answer(
        self, session: Session, operation: str, request: dict[str, Any], act: Callable[[], idempotency.Answer]
    ) -> schemas.JobCreated:
        """``act``'s answer; with a key, the first answer given to this key and request (see
        :func:`jobs.idempotency.answer_once`)."""
        if self.key is None:
            answer = act()
        else:
            request_hash = idempotency.request_hash(operation, request)
            answer = idempotency.answer_once(session, self.key, request_hash, ttl_seconds=self.ttl_seconds, act=act)
        return schemas.JobCreated(job_id=answer.job_id, status=JobStatus(answer.status), duplicate=answer.duplicate)


async def _once(
    request: Request,
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=idempotency.MAX_KEY_LENGTH,
            pattern=r"^[!-~]+$",
            description="Any string of visible ASCII characters (a UUID, say), new for each new request. "
            "A retry with the same key and the same request gets the first answer (the same job); "
            "with another request, 422. Kept for JOBRUNNER_IDEMPOTENCY_TTL_SECONDS (default 24 hours).",
        ),
    ] = None,
) -> Once:
    return Once(key=key, ttl_seconds=request.app.state.settings.idempotency_ttl_seconds)


OnceDep = Annotated[Once, Depends(_once)]


def make_post_router(kind_registry: Registry) -> APIRouter:
    """``POST /jobs`` for the public kinds of ``kind_registry`` (the body's schema lists each of them)."""
    post_router = APIRouter(prefix="/jobs", tags=["jobs"])
    JobRequest = schemas.job_request_model([kind for kind in kind_registry.all() if kind.public])

    @post_router.post(
        "",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=schemas.JobCreated,
        responses={
            200: {"model": schemas.JobCreated, "description": "An unfinished job holds the unique key: that job"},
            **errors(401, 409, 422),
        },
    )
    # JobRequest is a type built at run time, for FastAPI: mypy cannot follow it (hence the ignore);
    # the body is read through schemas.JobRequestBody.
    async def post_job(
        request: Annotated[JobRequest, Body()],  # type: ignore[valid-type]
        http_request: Request,
        database: Annotated[db.Database, Depends(get_database)],
        once: OnceDep,
        response: Response,
    ) -> schemas.JobCreated:
        """Store a job of a public kind; its ID goes to the workers once it is committed (delayed
        until ``run_at`` or ``delay_seconds``). With ``unique_key``, an unfinished job of the kind
        holding that key is answered instead (200). With an ``Idempotency-Key``, a retry of the same
        request gets the same answer."""
        # The route and its dependencies are async and the unit of work (session, insert, commit,
        # send, close) runs in one worker thread: one hand-off per request, where a plain ``def``
        # route with a session dependency takes three (FastAPI runs each in the thread pool).
        threads = http_request.app.state.write_threads
        accepted = await anyio.to_thread.run_sync(_create_job, database, request, once, limiter=threads)
        if accepted.duplicate:
            response.status_code = status.HTTP_200_OK
        return accepted

    return post_router


def _create_job(database: db.Database, body: schemas.JobRequestBody, once: Once) -> schemas.JobCreated:
    """``POST /jobs``'s unit of work in a session of its own: the job created (or found), committed,
    its ID sent (after the commit), the session closed."""
    args = body.args if isinstance(body.args, dict) else body.args.model_dump(mode="json")
    options = {"run_at": body.run_at, "delay_seconds": body.delay_seconds, "unique_key": body.unique_key}
    described = {"kind": body.kind, "args": args, **{key: value for key, value in options.items() if value is not None}}
    with database.sessions() as session:

        def create() -> idempotency.Answer:
            job_id, job_status, duplicate = store.insert_job(
                session,
                body.kind,
                args,
                public_only=True,
                run_at=body.run_at,
                delay=body.delay_seconds,
                unique_key=body.unique_key,
            )
            return idempotency.Answer(job_id=job_id, status=job_status, duplicate=duplicate)

        accepted = once.answer(session, "POST /jobs", described, create)
        session.commit()
    return accepted


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
    once: OnceDep,
    request: Annotated[schemas.ReplayRequest | None, Body()] = None,
) -> schemas.JobAccepted:
    """Put a failed job back to queued for a new run (its history is kept). With an
    ``Idempotency-Key``, a retry of the same request gets the first answer, not a 409."""
    reason = request.reason if request else None

    def replay() -> idempotency.Answer:
        job = store.replay_job(session, job_id, reason=reason)
        return idempotency.Answer(job_id=job.id, status=job.status)

    accepted = once.answer(session, "POST /jobs/{job_id}/replay", {"job_id": str(job_id), "reason": reason}, replay)
    session.commit()
    return schemas.JobAccepted(job_id=accepted.job_id, status=accepted.status)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.JobCancelled,
    responses=errors(401, 404, 409, 422),
)
def cancel_job(
    job_id: uuid.UUID, session: SessionDep, request: Annotated[schemas.CancelRequest | None, Body()] = None
) -> schemas.JobCancelled:
    """Cancel a job: a queued or retrying one is ``cancelled`` at once; a running one is asked to
    stop (``stopping: true``) and ends ``cancelled`` within a few seconds, its work rolled back,
    unless it finishes first. A finished job: 409."""
    job = store.cancel_job(session, job_id, reason=request.reason if request else None)
    session.commit()
    return schemas.JobCancelled(job_id=job.id, status=JobStatus(job.status), stopping=job.status == JobStatus.RUNNING)
