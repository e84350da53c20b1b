"""Checks of the database's invariants (``jobctl check``): each is one set-based, read-only query
that returns the rows breaking its invariant, at most ``limit`` of them; none loops over rows in Python.

The core's own checks are here; a feature declares its own next to the code that keeps them, with
:func:`jobs.registry.invariant` (the batches' counters, the files' row counts), and
:func:`run_checks` runs both. A check that finds nothing returns an empty list.

The core's invariants:

- ``final-attempt``: a ``failed`` or ``succeeded`` job has exactly one attempt row of that outcome
  in its current run (``run`` = its ``replay_count``), and no job has a final attempt (``failed``
  or ``succeeded``) of another outcome in its current run.
- ``running-lease``: a ``running`` job has a worker, a claim token and a lease; a job that is not
  running holds no lease.
- ``attempts-max``: no job's attempt count, and no run's counted attempts (every outcome but
  ``interrupted`` and ``replayed``), exceed the job's ``max_attempts``.
- ``attempt-count``: a job's ``attempts`` equals the counted attempt rows of its current run (one
  more while it runs: that attempt has no row yet).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.orm import Session

from jobs import models, registry
from jobs.models import AttemptOutcome, JobStatus
from jobs.registry import Check, Violation

_jobs = models.Job.__table__
_attempts = models.JobAttempt.__table__

#: Statuses of a job whose run ended with a final attempt of the same name.
FINISHED_STATUSES = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)
#: Outcomes that end a run.
FINAL_OUTCOMES = (AttemptOutcome.SUCCEEDED.value, AttemptOutcome.FAILED.value)
#: Outcomes that count against ``max_attempts`` (an interrupted attempt does not; a replay is no attempt).
COUNTED_OUTCOMES = (
    AttemptOutcome.SUCCEEDED.value,
    AttemptOutcome.ERROR.value,
    AttemptOutcome.FAILED.value,
    AttemptOutcome.LOST.value,
    AttemptOutcome.CANCELLED.value,
)
#: How many violations of each check are listed unless the caller says otherwise.
DEFAULT_LIMIT = 100


def check_final_attempts(session: Session, limit: int) -> list[Violation]:
    """``final-attempt``: see the module doc."""
    attempts = _attempts
    right = func.coalesce(func.sum(case((attempts.c.outcome == _jobs.c.status, 1), else_=0)), 0)
    wrong = func.coalesce(
        func.sum(
            case((and_(attempts.c.outcome.in_(FINAL_OUTCOMES), attempts.c.outcome != _jobs.c.status), 1), else_=0)
        ),
        0,
    )
    rows_in_run = func.count(attempts.c.id)
    query = (
        select(
            _jobs.c.id,
            _jobs.c.status,
            _jobs.c.replay_count,
            right.label("right"),
            wrong.label("wrong"),
            rows_in_run.label("rows_in_run"),
        )
        .select_from(
            _jobs.outerjoin(attempts, and_(attempts.c.job_id == _jobs.c.id, attempts.c.run == _jobs.c.replay_count))
        )
        .group_by(_jobs.c.id, _jobs.c.status, _jobs.c.replay_count)
        .having(or_(and_(_jobs.c.status.in_(FINISHED_STATUSES), right != 1), wrong != 0))
        .limit(limit)
    )
    violations = []
    for row in session.execute(query):
        where = f"run {row.replay_count} ({row.rows_in_run} attempt row(s))"
        if row.status in FINISHED_STATUSES and row.right != 1:
            detail = f"{row.status}, but {row.right} `{row.status}` attempt(s) in {where}; exactly 1 expected"
        else:
            detail = f"{row.status}, but {row.wrong} final attempt(s) of another outcome in {where}"
        violations.append(Violation("final-attempt", f"job {row.id}", detail))
    return violations


def check_running_leases(session: Session, limit: int) -> list[Violation]:
    """``running-lease``: see the module doc."""
    running = _jobs.c.status == JobStatus.RUNNING.value
    query = (
        select(_jobs.c.id, _jobs.c.status, _jobs.c.worker_id, _jobs.c.claim_token, _jobs.c.lease_expires_at)
        .where(
            or_(
                and_(
                    running,
                    or_(
                        _jobs.c.worker_id.is_(None),
                        _jobs.c.claim_token.is_(None),
                        _jobs.c.lease_expires_at.is_(None),
                    ),
                ),
                and_(~running, _jobs.c.lease_expires_at.is_not(None)),
            )
        )
        .limit(limit)
    )
    violations = []
    for row in session.execute(query):
        if row.status == JobStatus.RUNNING:
            missing = [
                name
                for name, value in (
                    ("worker", row.worker_id),
                    ("claim token", row.claim_token),
                    ("lease", row.lease_expires_at),
                )
                if value is None
            ]
            detail = f"running without a {', '.join(missing)}"
        else:
            detail = f"{row.status}, but holds a lease (until {row.lease_expires_at.isoformat(timespec='seconds')})"
        violations.append(Violation("running-lease", f"job {row.id}", detail))
    return violations


def check_attempts_max(session: Session, limit: int) -> list[Violation]:
    """``attempts-max``: see the module doc."""
    violations = [
        Violation("attempts-max", f"job {row.id}", f"{row.attempts} attempts, but at most {row.max_attempts}")
        for row in session.execute(
            select(_jobs.c.id, _jobs.c.attempts, _jobs.c.max_attempts)
            .where(or_(_jobs.c.attempts > _jobs.c.max_attempts, _jobs.c.attempts < 0))
            .limit(limit)
        )
    ]
    counted = func.count(_attempts.c.id)
    highest = func.max(_attempts.c.number)
    per_run = (
        select(
            _attempts.c.job_id, _attempts.c.run, _jobs.c.max_attempts, counted.label("counted"), highest.label("top")
        )
        .select_from(_attempts.join(_jobs, _jobs.c.id == _attempts.c.job_id))
        .where(_attempts.c.outcome.in_(COUNTED_OUTCOMES))
        .group_by(_attempts.c.job_id, _attempts.c.run, _jobs.c.max_attempts)
        .having(or_(counted > _jobs.c.max_attempts, highest > _jobs.c.max_attempts))
        .limit(max(limit - len(violations), 0))
    )
    for row in session.execute(per_run):
        detail = (
            f"run {row.run} has {row.counted} counted attempt(s), up to number {row.top}; at most {row.max_attempts}"
        )
        violations.append(Violation("attempts-max", f"job {row.job_id}", detail))
    return violations


def check_attempt_counts(session: Session, limit: int) -> list[Violation]:
    """``attempt-count``: see the module doc."""
    counted = func.coalesce(func.sum(case((_attempts.c.outcome.in_(COUNTED_OUTCOMES), 1), else_=0)), 0)
    in_flight = case((_jobs.c.status == JobStatus.RUNNING.value, literal(1)), else_=literal(0))
    query = (
        select(_jobs.c.id, _jobs.c.status, _jobs.c.attempts, _jobs.c.replay_count, counted.label("counted"))
        .select_from(
            _jobs.outerjoin(_attempts, and_(_attempts.c.job_id == _jobs.c.id, _attempts.c.run == _jobs.c.replay_count))
        )
        .group_by(_jobs.c.id, _jobs.c.status, _jobs.c.attempts, _jobs.c.replay_count)
        .having(_jobs.c.attempts != counted + in_flight)
        .limit(limit)
    )
    violations = []
    for row in session.execute(query):
        running = " (and one running)" if row.status == JobStatus.RUNNING else ""
        detail = (
            f"{row.status} with {row.attempts} attempts, but run {row.replay_count} has "
            f"{row.counted} counted attempt row(s){running}"
        )
        violations.append(Violation("attempt-count", f"job {row.id}", detail))
    return violations


#: The core's checks, run before the features' own.
CORE_CHECKS: tuple[Check, ...] = (check_final_attempts, check_running_leases, check_attempts_max, check_attempt_counts)


@dataclasses.dataclass(frozen=True, slots=True)
class CheckReport:
    """What :func:`run_checks` found."""

    #: The checks run, by name.
    checks: list[str]
    violations: list[Violation]
    #: The checks that found ``limit`` violations: there may be more than are listed.
    truncated: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


def checks_of(kinds: registry.Registry) -> list[Check]:
    """The core's checks, then those the registry's modules declared."""
    return [*CORE_CHECKS, *kinds.invariant_checks()]


def run_checks(session: Session, checks: Sequence[Check], *, limit: int = DEFAULT_LIMIT) -> CheckReport:
    """Run ``checks`` (e.g. :func:`checks_of`) in ``session``, which they only read; each lists at
    most ``limit`` violations."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    violations: list[Violation] = []
    truncated = []
    for check in checks:
        found = check(session, limit)
        violations += found
        if len(found) >= limit:
            truncated.append(check.__name__)
    return CheckReport([check.__name__ for check in checks], violations, truncated)
