"""Async kinds (``async def handler(session: AsyncSession, job)``) run on Dramatiq's event loop
thread under the guarantees of sync ones: the success fenced on the claim in the handler's
transaction, the failure recorded in a fresh session, the time limit, checkpoints, no connection
left checked out; sync and async kinds in one worker."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
import pytest

from jobs import kinds as job_kinds
from jobs.config import Settings
from jobs.models import AttemptOutcome, JobStatus
from jobs.registry import Registry
from worker.middleware import JobSessionMiddleware
from worker.state import WorkerState

pytestmark = pytest.mark.usefixtures("invariants_hold")


@pytest.fixture
def kind_registry(settings: Settings) -> Registry:
    """The test kinds and the async ones: the worker's broker then runs Dramatiq's AsyncIO."""
    return job_kinds.load_registry(settings, ["tests.async_kinds"])


@pytest.fixture
def worker_state(broker: dramatiq.Broker) -> WorkerState:
    (middleware,) = [m for m in broker.middleware if isinstance(m, JobSessionMiddleware)]
    return middleware.state


def _no_connection_checked_out(state: WorkerState) -> None:
    assert state.require_database().engine.pool.checkedout() == 0
    assert state.require_async_database().engine.pool.checkedout() == 0


def test_sync_and_async_kinds_succeed_side_by_side_in_one_worker(
    make_job, drain, fetch, count_notes, worker_state: WorkerState
):
    async_ids = [make_job("test.async_note", {"text": f"a{i}"}) for i in range(5)]
    sync_ids = [make_job("test.note", {"text": f"s{i}"}) for i in range(5)]
    drain()
    for job_id in async_ids + sync_ids:
        job, history = fetch(job_id)
        assert (job.status, [a.outcome for a in history]) == (JobStatus.SUCCEEDED, [AttemptOutcome.SUCCEEDED])
        assert count_notes(job_id) == 1
    _no_connection_checked_out(worker_state)


def test_an_async_failure_is_rolled_back_and_recorded_in_a_fresh_session(
    make_job, drain, fetch, count_notes, worker_state: WorkerState
):
    job_id = make_job("test.async_note", {"text": "x", "raise_after": True})
    drain()
    job, history = fetch(job_id)
    assert job.status == JobStatus.FAILED and job.error_type == "tests.kinds.Boom"
    assert [a.outcome for a in history] == [AttemptOutcome.ERROR, AttemptOutcome.FAILED]
    assert count_notes(job_id) == 0
    _no_connection_checked_out(worker_state)


def test_an_async_job_past_its_time_limit_is_cancelled_and_rolled_back(
    make_job, drain, fetch, count_notes, worker_state: WorkerState
):
    job_id = make_job("test.async_sleep")
    drain()
    job, _ = fetch(job_id)
    assert job.status == JobStatus.FAILED and job.error_type == "dramatiq.middleware.time_limit.TimeLimitExceeded"
    assert count_notes(job_id) == 0
    _no_connection_checked_out(worker_state)


def test_an_async_job_whose_claim_was_taken_over_commits_nothing(
    make_job, drain, fetch, count_notes, caplog: pytest.LogCaptureFixture
):
    job_id = make_job("test.async_stolen")
    drain()
    job, history = fetch(job_id)
    assert job.status == JobStatus.RUNNING and history == []  # still the "other worker's"
    assert count_notes(job_id) == 0
    assert "claim_lost" in caplog.text


def test_an_async_checkpoint_commits_the_work_so_far(make_job, drain, fetch, count_notes: Callable[..., int]):
    job_id = make_job("test.async_checkpoint")
    drain()
    job, _ = fetch(job_id)
    assert job.status == JobStatus.FAILED
    assert count_notes(job_id) == 1  # "kept" committed by the checkpoint; "lost" rolled back
