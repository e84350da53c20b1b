"""What an operator can do from the dashboard, as tables: each action names the store function it
goes through, the states it applies to, and whether it takes a reason. The pages draw their buttons
from these tables, and the routes run them, so a new action (cancel, a queue's pause and resume, a
schedule's run now) is one entry here. Each goes through the same store function as the API and
``jobctl``.

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
from jobs.scheduling import service as schedules
from jobs.scheduling.models import Schedule
from jobs.store.cancelling import CANCELLABLE

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
    #: What the confirmation adds about its effect.
    note: str = ""


def _replay(session: Session, job_ids: Sequence[uuid.UUID], reason: str | None) -> list[uuid.UUID]:
    return store.replay_jobs(session, job_ids, reason=reason)


def _replay_in_batch(
    session: Session, batch_id: uuid.UUID, job_ids: Sequence[uuid.UUID], reason: str | None
) -> list[uuid.UUID]:
    return batches.replay_batch(session, batch_id, reason=reason, job_ids=job_ids)


def _retry_now(session: Session, job_ids: Sequence[uuid.UUID], reason: str | None) -> list[uuid.UUID]:
    return store.retry_jobs_now(session, job_ids)


def _cancel(session: Session, job_ids: Sequence[uuid.UUID], reason: str | None) -> list[uuid.UUID]:
    done = store.cancel(session, job_ids, reason=reason)
    return done.cancelled + done.stopping


#: Every job action, in the order the buttons are shown.
JOB_ACTIONS: dict[str, JobAction] = {
    action.name: action
    for action in (
        JobAction("replay", "Replay", (JobStatus.FAILED,), _replay, takes_reason=True, run_for_batch=_replay_in_batch),
        JobAction("retry_now", "Retry now", (JobStatus.RETRYING,), _retry_now),
        JobAction(
            "cancel",
            "Cancel",
            CANCELLABLE,
            _cancel,
            takes_reason=True,
            danger=True,
            note="Jobs not running end cancelled at once; running ones are asked to stop and end cancelled "
            "within a few seconds, their work rolled back (unless they finish first).",
        ),
    )
}


def actions_for(status: str) -> list[JobAction]:
    """The job actions that apply to a job in ``status``."""
    return [action for action in JOB_ACTIONS.values() if status in action.applies_to]


@dataclasses.dataclass(frozen=True)
class ObjectAction:
    """An action on one thing that is not a job: a batch, a queue, a schedule."""

    name: str
    label: str
    #: What it acts on: "batch", "queue", "schedule".
    target: str
    #: Whether its button is shown for this object (the row the page shows).
    shown_for: Callable[[object], bool]
    #: (session, the object's key, reason) -> how many it changed (flushes, does not commit): jobs
    #: for a batch's cancel; for a queue or a schedule, 1 if it changed (a run now: its one new job).
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


def _queue_paused(queue: object) -> bool:
    return bool(getattr(queue, "paused", False))


def _queue_running(queue: object) -> bool:
    return not _queue_paused(queue)


def _pause_queue(session: Session, key: str, reason: str | None) -> int:
    return int(store.pause_queue(session, key, reason=reason))


def _resume_queue(session: Session, key: str, reason: str | None) -> int:
    return int(store.resume_queue(session, key) is not None)


def _schedule_paused(schedule: object) -> bool:
    return isinstance(schedule, Schedule) and schedule.paused


def _schedule_running(schedule: object) -> bool:
    return isinstance(schedule, Schedule) and not schedule.paused


def _schedule_made_at_run_time(schedule: object) -> bool:
    # One declared in code comes back at the next worker boot: it is removed from the code.
    return isinstance(schedule, Schedule) and not schedule.declared


def _pause_schedule(session: Session, key: str, reason: str | None) -> int:
    was_paused = schedules.get_schedule(session, key).paused
    return int(schedules.pause_schedule(session, key).paused and not was_paused)


def _resume_schedule(session: Session, key: str, reason: str | None) -> int:
    was_paused = schedules.get_schedule(session, key).paused
    return int(was_paused and not schedules.resume_schedule(session, key).paused)


def _run_schedule(session: Session, key: str, reason: str | None) -> int:
    schedules.run_schedule(session, key)
    return 1


def _delete_schedule(session: Session, key: str, reason: str | None) -> int:
    schedules.delete_schedule(session, key)
    return 1


def _always(obj: object) -> bool:
    return True


#: Every action on other things, by target: the batches, queues and schedules pages draw the
#: buttons of their target.
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
        ObjectAction("pause", "Pause", "queue", _queue_running, _pause_queue, takes_reason=True),
        ObjectAction("resume", "Resume", "queue", _queue_paused, _resume_queue),
        ObjectAction("pause", "Pause", "schedule", _schedule_running, _pause_schedule, takes_reason=True),
        ObjectAction("resume", "Resume", "schedule", _schedule_paused, _resume_schedule),
        ObjectAction("run", "Run now", "schedule", _always, _run_schedule),
        ObjectAction("delete", "Delete", "schedule", _schedule_made_at_run_time, _delete_schedule, danger=True),
    )
}


def object_actions(target: str, obj: object) -> list[ObjectAction]:
    """The actions shown for ``obj`` of ``target``."""
    return [a for (t, _), a in OBJECT_ACTIONS.items() if t == target and a.shown_for(obj)]
