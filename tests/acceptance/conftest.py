"""Fixtures for the acceptance tests: the real ``jobctl`` in subprocesses, and failed jobs to replay."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from jobs import db, errors, models, store

#: Where ``python -m worker`` finds ``tests.kinds`` (JOBRUNNER_JOB_MODULES) on its path.
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Longest one short ``jobctl`` command may take.
COMMAND_TIMEOUT_SECONDS = 60
#: What a test's claim of a job looks like.
CLAIM = {"worker_id": "acceptance-test", "lease_seconds": 30}


def jobctl_command(*args: str) -> list[str]:
    """The command line of ``jobctl ARGS`` (``python -m worker`` is ``jobctl``)."""
    return [sys.executable, "-m", "worker", *args]


def cli_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with plain, wide output: no colour, and Rich
    tables wide enough that a job ID is never folded over two lines."""
    return {**(os.environ if base is None else base), "NO_COLOR": "1", "COLUMNS": "250", "TERM": "dumb"}


def embedded_defaults_env() -> dict[str, str]:
    """The environment with every ``JOBRUNNER_`` setting removed, so a child uses the embedded
    defaults (SQLite under ./var, a private Redis) whatever the test run exported."""
    return cli_env({key: value for key, value in os.environ.items() if not key.startswith("JOBRUNNER_")})


@pytest.fixture
def jobctl(settings, database) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``jobctl ARGS`` to the end in a subprocess, against the test's (emptied) database and Redis."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            jobctl_command(*args),
            cwd=REPO_ROOT,
            env=cli_env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )

    return run


@pytest.fixture
def make_failed_job(database: db.Database, make_job) -> Callable[..., uuid.UUID]:
    """Create a job and fail it for good (claimed, then a PermanentError recorded), as a worker
    would; ``failed_ago`` moves its failure into the past. Returns its ID."""

    def make(
        kind: str = "fail", message: str = "failed on purpose", failed_ago: dt.timedelta | None = None
    ) -> uuid.UUID:
        job_id = make_job(kind)
        with database.engine.connect() as conn:
            job = store.claim_job(conn, job_id, **CLAIM)
        with db.session_scope(database.sessions) as session:
            status = store.record_failure(session, job, errors.PermanentError(message), backoff_seconds=0)
        assert status == models.JobStatus.FAILED
        if failed_ago is not None:
            with database.engine.begin() as conn:
                conn.execute(
                    update(models.Job.__table__)
                    .where(models.Job.id == job_id)
                    .values(finished_at=store.utcnow() - failed_ago)
                )
        return job_id

    return make
