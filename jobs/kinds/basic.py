"""``noop``, ``fail`` and ``sleep``: the smallest kinds, to see the job lifecycle end to end (and
try a cancel)."""

from __future__ import annotations

import time

import pydantic
from sqlalchemy.orm import Session

from jobs import errors, registry


class NoopArgs(pydantic.BaseModel):
    """``noop`` takes nothing it uses; extra keys are refused so typos show."""

    model_config = pydantic.ConfigDict(extra="forbid")


class FailArgs(pydantic.BaseModel):
    """How ``fail`` fails."""

    model_config = pydantic.ConfigDict(extra="forbid")

    message: str = pydantic.Field(default="failed on purpose", max_length=1000)
    #: Fail only the first N attempts of a run, then succeed; None: fail every attempt.
    fail_times: int | None = pydantic.Field(default=None, ge=0)
    #: Fail with a PermanentError: no retry.
    permanent: bool = False


class SleepArgs(pydantic.BaseModel):
    """How long ``sleep`` sleeps."""

    model_config = pydantic.ConfigDict(extra="forbid")

    seconds: float = pydantic.Field(gt=0, le=3600)


#: ``sleep`` checkpoints this often, so a cancel stops it within about this long.
SLEEP_CHECKPOINT_SECONDS = 1.0


class IntentionalFailure(Exception):
    """Raised by the ``fail`` kind."""


@registry.job_kind("noop", public=True, args=NoopArgs)
def noop(session: Session, job: registry.RunningJob) -> None:
    """Do nothing and succeed."""


@registry.job_kind("fail", public=True, args=FailArgs)
def fail(session: Session, job: registry.RunningJob) -> None:
    """Raise with the given message (only for the first ``fail_times`` attempts, if given)."""
    args: FailArgs = job.args
    if args.fail_times is not None and job.attempt > args.fail_times:
        return
    if args.permanent:
        raise errors.PermanentError(args.message)
    raise IntentionalFailure(args.message)


@registry.job_kind("sleep", public=True, args=SleepArgs, time_limit_seconds=3700)
def sleep(session: Session, job: registry.RunningJob) -> None:
    """Sleep ``seconds`` (at most an hour), checkpointing every second: for demos, tests and trying
    a cancel."""
    args: SleepArgs = job.args
    deadline = time.monotonic() + args.seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, SLEEP_CHECKPOINT_SECONDS))
        job.checkpoint()
