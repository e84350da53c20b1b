"""Managing schedules and firing the due ones.

Firing (:func:`fire_due`, run by every worker's scheduler thread) decides each fire time once:

1. the due schedules are read (on PostgreSQL ``FOR UPDATE SKIP LOCKED``: a schedule another worker
   is firing is left to it);
2. a fire time is taken by a compare-and-set on ``next_fire_at``: ``UPDATE ... WHERE name = ? AND
   next_fire_at = <as read>`` (a worker that read it before another's commit changes nothing);
3. the fire is recorded in ``schedule_fires``, whose unique (schedule_name, fire_at) refuses a second
   job for the same time whatever happened before, and its job is created, in one SAVEPOINT.

After downtime the schedule fires once, for the latest time missed, not once per missed tick;
its next fire time is then the first after now. All of it commits with the caller's transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from jobs import db, errors, models, registry, store
from jobs.scheduling.declared import ScheduleSpec
from jobs.scheduling.models import Schedule, ScheduleFire
from jobs.scheduling.timing import Timing

logger = logging.getLogger(__name__)

_schedules = Schedule.__table__
_fires = ScheduleFire.__table__

#: Schedules fired per transaction at most; more wait for the next turn (a moment later).
FIRE_BATCH = 100


class ScheduleNotFound(errors.NotFound):
    """There is no schedule with that name."""


class ScheduleExists(errors.Conflict):
    """A schedule with that name exists already."""


@dataclasses.dataclass(frozen=True, slots=True)
class Fire:
    """One fire: the schedule, the time it was for, the job it created."""

    schedule: str
    fire_at: dt.datetime
    job_id: uuid.UUID


def timing_of(schedule: Any) -> Timing:
    """The timing of a ``schedules`` row (or a :class:`Schedule`)."""
    return Timing(cron=schedule.cron, every_seconds=schedule.every_seconds, timezone=schedule.timezone)


# --- managing -----------------------------------------------------------------------------------

#: ``pause_schedule`` or ``resume_schedule``.
Change = Callable[[Session, str], Schedule]


def list_schedules(session: Session) -> list[Schedule]:
    """Every schedule, by name."""
    return list(session.scalars(select(Schedule).order_by(Schedule.name)))


def get_schedule(session: Session, name: str) -> Schedule:
    """The schedule ``name``.

    Raises:
        ScheduleNotFound: there is none.
    """
    return db.get_or_raise(session, Schedule, name, ScheduleNotFound, what="schedule")


def create_schedule(
    session: Session,
    name: str,
    kind: str,
    timing: Timing,
    args: dict[str, Any] | None = None,
    *,
    public_only: bool = False,
) -> Schedule:
    """Add the schedule ``name`` (run-time managed, not declared in code); it first fires at the
    first time of ``timing`` after now.

    Raises:
        ScheduleExists: the name is taken.
        UnknownJobKind, JobKindNotPublic, InvalidJobArgs: it names no job it may create.
    """
    job_kind = registry.of(session).get(kind)
    if public_only and not job_kind.public:
        raise errors.JobKindNotPublic(f"job kind {kind!r} is internal: only the runner creates it")
    stored_args = job_kind.validate_args(args or {})
    if session.get(Schedule, name) is not None:
        raise ScheduleExists(f"a schedule named {name!r} exists already")
    now = store.utcnow()
    schedule = Schedule(
        name=name,
        kind=kind,
        args=stored_args,
        cron=timing.cron,
        every_seconds=timing.every_seconds,
        timezone=timing.timezone,
        declared=False,
        paused=False,
        next_fire_at=timing.next_after(now),
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(schedule)
    except sa_exc.IntegrityError:
        raise ScheduleExists(f"a schedule named {name!r} exists already") from None
    return schedule


def upsert_declared(session: Session, specs: Sequence[ScheduleSpec]) -> None:
    """Make the ``schedules`` rows of the schedules declared in code match them (each worker does
    at boot). A run-time pause stays; a changed timing starts from its next time after now."""
    now = store.utcnow()
    for spec in specs:
        existing = session.get(Schedule, spec.name, with_for_update=_locks(session))
        if existing is None:
            try:
                with session.begin_nested():
                    session.add(_new_declared(spec, now))
                continue
            except sa_exc.IntegrityError:  # another worker inserted it meanwhile
                existing = session.get(Schedule, spec.name, with_for_update=_locks(session), populate_existing=True)
                if existing is None:
                    raise
        _update_declared(existing, spec, now)


def _locks(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _new_declared(spec: ScheduleSpec, now: dt.datetime) -> Schedule:
    return Schedule(
        name=spec.name,
        kind=spec.kind,
        args=spec.args,
        cron=spec.timing.cron,
        every_seconds=spec.timing.every_seconds,
        timezone=spec.timing.timezone,
        declared=True,
        paused=False,
        next_fire_at=spec.timing.next_after(now),
        created_at=now,
        updated_at=now,
    )


def _update_declared(schedule: Schedule, spec: ScheduleSpec, now: dt.datetime) -> None:
    changed = False
    if timing_of(schedule) != spec.timing:
        schedule.cron, schedule.every_seconds = spec.timing.cron, spec.timing.every_seconds
        schedule.timezone = spec.timing.timezone
        schedule.next_fire_at = spec.timing.next_after(now)
        changed = True
    if (schedule.kind, schedule.args, schedule.declared) != (spec.kind, spec.args, True):
        schedule.kind, schedule.args, schedule.declared = spec.kind, spec.args, True
        changed = True
    if changed:
        schedule.updated_at = now


def pause_schedule(session: Session, name: str) -> Schedule:
    """Stop ``name`` firing until resumed.

    Raises:
        ScheduleNotFound: there is no such schedule.
    """
    schedule = get_schedule(session, name)
    if not schedule.paused:
        schedule.paused = True
        schedule.updated_at = store.utcnow()
    return schedule


def resume_schedule(session: Session, name: str) -> Schedule:
    """Let ``name`` fire again, from its first time after now (the paused times are not caught up).

    Raises:
        ScheduleNotFound: there is no such schedule.
    """
    schedule = get_schedule(session, name)
    if schedule.paused:
        now = store.utcnow()
        schedule.paused = False
        schedule.next_fire_at = timing_of(schedule).next_after(now)
        schedule.updated_at = now
    return schedule


def delete_schedule(session: Session, name: str) -> None:
    """Delete ``name`` and its fire records (its jobs stay). A schedule declared in code comes back
    at the next worker boot: remove it from the code too.

    Raises:
        ScheduleNotFound: there is no such schedule.
    """
    session.delete(get_schedule(session, name))


def run_schedule(session: Session, name: str) -> models.Job:
    """Fire ``name`` now, out of its timing (paused or not); its timed fires go on as before.

    Raises:
        ScheduleNotFound: there is no such schedule.
    """
    schedule = get_schedule(session, name)
    now = store.utcnow()
    job_id = uuid.uuid4()
    session.execute(insert(_fires).values(schedule_name=name, fire_at=now, manual=True, job_id=job_id, created_at=now))
    return store.create_job(session, schedule.kind, schedule.args, job_id=job_id)


def list_fires(session: Session, name: str, *, limit: int = 100) -> list[ScheduleFire]:
    """The latest fires of ``name``, newest first."""
    query = select(ScheduleFire).where(ScheduleFire.schedule_name == name).order_by(ScheduleFire.fire_at.desc())
    return list(session.scalars(query.limit(limit)))


# --- firing -------------------------------------------------------------------------------------


def next_due_at(session: Session) -> dt.datetime | None:
    """The earliest next fire time of the schedules not paused (None: there is none)."""
    return session.scalar(select(func.min(Schedule.next_fire_at)).where(Schedule.paused.is_(False)))


def fire_due(session: Session, *, now: dt.datetime | None = None, limit: int = FIRE_BATCH) -> list[Fire]:
    """Fire every schedule due by ``now`` (default: now) that no other worker is firing: one job per
    schedule, for its latest fire time missed; see the module doc. The caller commits."""
    now = now or store.utcnow()
    due = (
        select(_schedules)
        .where(_schedules.c.paused.is_(False), _schedules.c.next_fire_at <= now)
        .order_by(_schedules.c.next_fire_at)
        .limit(limit)
    )
    if _locks(session):
        due = due.with_for_update(skip_locked=True)
    fires = []
    for row in session.execute(due).all():
        fire = _fire(session, row, now)
        if fire is not None:
            fires.append(fire)
    return fires


def _fire(session: Session, row: Any, now: dt.datetime) -> Fire | None:
    try:
        timing = timing_of(row)
    except errors.Invalid as exc:
        logger.error("schedule %s cannot fire: %s", row.name, exc, extra={"schedule": row.name, "action": "failed"})
        return None
    fire_at = max(row.next_fire_at, timing.latest_until(now))
    taken = session.connection().execute(
        update(_schedules)
        .where(_schedules.c.name == row.name, _schedules.c.next_fire_at == row.next_fire_at)
        .values(next_fire_at=timing.next_after(fire_at), last_fire_at=fire_at)
    )
    if taken.rowcount != 1:
        return None  # another worker took this fire time first
    job_id = uuid.uuid4()
    try:
        with session.begin_nested():
            session.execute(
                insert(_fires).values(
                    schedule_name=row.name, fire_at=fire_at, manual=False, job_id=job_id, created_at=now
                )
            )
            store.create_job(session, row.kind, row.args, job_id=job_id)
    except sa_exc.IntegrityError:
        return None  # this fire time has its job already
    except errors.JobError as exc:
        # A kind this worker does not know, args that no longer fit: the time passes without a job.
        logger.error(
            "schedule %s could not create its job for %s: %s",
            row.name,
            fire_at.isoformat(),
            exc,
            extra={"schedule": row.name, "action": "failed"},
        )
        return None
    logger.info(
        "schedule %s fired for %s: job %s",
        row.name,
        fire_at.isoformat(),
        job_id,
        extra={"schedule": row.name, "job_id": str(job_id), "action": "fired"},
    )
    return Fire(schedule=row.name, fire_at=fire_at, job_id=job_id)
