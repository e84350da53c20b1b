"""What an operator can do from the dashboard, as tables: each action names the store function it
goes through, the states it applies to, and whether it takes a reason. The pages draw their buttons
from these tables, and the routes run them, so a new action (cancel, a queue's pause and resume, a
schedule's run now) is one entry here.

Job actions apply to one job, a selection, or every job matching the list's filter; they are run in
chunks of :data:`CHUNK` jobs, one transaction each (as ``jobctl replay`` does), and each is recorded
in the operator log (:mod:`jobs.operator_log`) with who, when, why and how many.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs import models, store
from jobs.kinds.batches import errors as batch_errors
from jobs.kinds.batches import service as batches
from jobs.kinds.batches.models import BATCH_TERMINAL, Batch
from jobs.models import JobStatus

#: Jobs changed per transaction by a bulk action (as ``jobctl replay``'s REPLAY_CHUNK).
CHUNK = 500


@dataclasses.dataclass(frozen=True)
class JobAction:
    """An action on jobs."""

    #: Its name in URLs and in the operator log.
    name: str
    #: Its button's text.
    label: str
    #: The states it changes; jobs in others are skipped (and a bulk count counts only these).
    applies_to: tuple[JobStatus, ...]
    #: The store function: (session, job IDs, reason) -> the IDs it changed. It must skip jobs that
    #: left ``applies_to`` meanwhile (a conditional UPDATE), flush and not commit.
    run: Callable[[Session, Sequence[uuid.UUID], str | None], list[uuid.UUID]]
    #: Whether the form asks why (kept in the operator log, and by a replay in the job's history).
    takes_reason: bool = False
    #: Drawn as a dangerous button (red).
    danger: bool = False
    #: For a filter on one batch: (session, batch ID, job IDs, reason) -> the IDs changed, when the
    #: batch must hear of it (a replay reopens the batch, as ``jobctl replay --batch`` does).
    run_for_batch: Callable[[Session, uuid.UUID, Sequence[uuid.UUID], str | None], list[uuid.UUID]] | None = None


def _replay(session: Session, job_ids: Sequence[uuid.UUID], reason: str | None) -> list[uuid.UUID]:
    return store.replay_jobs(session, job_ids, reason=reason)


def _replay_in_batch(
    session: Session, batch_id: uuid.UUID, job_ids: Sequence[uuid.UUID], reason: str | None
) -> list[uuid.UUID]:
    return batches.replay_batch(session, batch_id, reason=reason, job_ids=job_ids)


def _retry_now(session: Session, job_ids: Sequence[uuid.UUID], reason: str | None) -> list[uuid.UUID]:
    return store.retry_jobs_now(session, job_ids)


#: Every job action, in the order the buttons are shown. (The cancel of a job, once the store has
#: it, is one more entry: ``JobAction("cancel", "Cancel", (QUEUED, RETRYING, ...), _cancel, danger=True)``.)
JOB_ACTIONS: dict[str, JobAction] = {
    action.name: action
    for action in (
        JobAction("replay", "Replay", (JobStatus.FAILED,), _replay, takes_reason=True, run_for_batch=_replay_in_batch),
        JobAction("retry_now", "Retry now", (JobStatus.RETRYING,), _retry_now),
    )
}


def actions_for(status: str) -> list[JobAction]:
    """The job actions that apply to a job in ``status``."""
    return [action for action in JOB_ACTIONS.values() if status in action.applies_to]


@dataclasses.dataclass(frozen=True)
class ObjectAction:
    """An action on one thing that is not a job (a batch; a queue or a schedule once they have any)."""

    name: str
    label: str
    #: What it acts on: "batch", "queue", "schedule".
    target: str
    #: Whether its button is shown for this object (the row the page shows).
    shown_for: Callable[[object], bool]
    #: (session, the object's key, reason) -> how many jobs it changed (flushes, does not commit).
    run: Callable[[Session, str, str | None], int]
    #: (session, the object's key) -> how many jobs it would change, for its confirmation (None: not said).
    count: Callable[[Session, str], int] | None = None
    takes_reason: bool = False
    danger: bool = False


def _batch_waiting(session: Session, key: str) -> int:
    """How many of the batch's jobs have not started (those its cancel drops); running ones finish."""
    try:
        batch_id = uuid.UUID(key)
    except ValueError:
        raise batch_errors.BatchNotFound(f"no batch {key}") from None
    waiting = select(func.count()).where(
        models.Job.id.in_(batches.job_ids_of(batch_id)), models.Job.status.in_([s.value for s in models.CLAIMABLE])
    )
    return session.scalar(waiting) or 0


def _cancel_batch(session: Session, key: str, reason: str | None) -> int:
    before = _batch_waiting(session, key)
    batches.cancel_batch(session, uuid.UUID(key))
    return before - _batch_waiting(session, key)


def _batch_running(batch: object) -> bool:
    return isinstance(batch, Batch) and batch.status not in BATCH_TERMINAL


#: Every action on other things, by target. A queue's pause and resume and a schedule's pause,
#: resume and run now are entries here once the store has them: the queues and schedules pages draw
#: the buttons of their target.
OBJECT_ACTIONS: dict[tuple[str, str], ObjectAction] = {
    (action.target, action.name): action
    for action in (
        ObjectAction(
            "cancel",
            "Cancel batch",
            "batch",
            _batch_running,
            _cancel_batch,
            count=_batch_waiting,
            takes_reason=True,
            danger=True,
        ),
    )
}


def object_actions(target: str, obj: object) -> list[ObjectAction]:
    """The actions shown for ``obj`` of ``target``."""
    return [a for (t, _), a in OBJECT_ACTIONS.items() if t == target and a.shown_for(obj)]
