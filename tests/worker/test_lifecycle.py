"""The job lifecycle through real Dramatiq workers: success, retries, failure, isolation."""

from __future__ import annotations

import pytest

from jobs.models import AttemptOutcome, JobStatus


@pytest.mark.brokers
def test_noop_job_succeeds_with_one_attempt(make_job, drain, fetch):
    job_id = make_job("noop")
    drain()
    job, history = fetch(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.attempts == 1
    assert [(a.number, a.outcome) for a in history] == [(1, AttemptOutcome.SUCCEEDED)]
    assert job.finished_at >= job.started_at >= job.created_at


def test_handler_that_writes_then_raises_leaves_no_row(make_job, drain, fetch, count_notes):
    job_id = make_job("test.note", {"text": "x", "raise_after": True}, max_attempts=1)
    drain()
    job, history = fetch(job_id)
    assert count_notes(job_id) == 0
    assert job.status == JobStatus.FAILED
    assert job.error_type == "tests.kinds.Boom"
    assert "raised after writing 'x'" in job.error_message
    assert [a.outcome for a in history] == [AttemptOutcome.FAILED]


def test_handler_that_writes_commits_its_rows_with_the_success(make_job, drain, fetch, count_notes):
    job_id = make_job("test.note", {"text": "kept"})
    drain()
    assert fetch(job_id)[0].status == JobStatus.SUCCEEDED
    assert count_notes(job_id) == 1


@pytest.mark.brokers
def test_failing_job_retries_then_fails_with_every_attempt_recorded(make_job, drain, fetch):
    job_id = make_job("fail", {"message": "always broken"}, max_attempts=3)
    drain()
    job, history = fetch(job_id)
    assert job.status == JobStatus.FAILED
    assert job.attempts == 3
    assert [(a.number, a.outcome) for a in history] == [
        (1, AttemptOutcome.ERROR),
        (2, AttemptOutcome.ERROR),
        (3, AttemptOutcome.FAILED),
    ]
    assert all(a.error_type == "jobs.kinds.basic.IntentionalFailure" for a in history)
    assert all(a.error_message == "always broken" for a in history)
    assert all("raise IntentionalFailure" in a.error_traceback for a in history)
    assert job.error_message == "always broken" and "Traceback" in job.error_traceback


def test_job_failing_only_its_first_attempt_succeeds_on_the_second(make_job, drain, fetch):
    job_id = make_job("fail", {"fail_times": 1})
    drain()
    job, history = fetch(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.attempts == 2
    assert [a.outcome for a in history] == [AttemptOutcome.ERROR, AttemptOutcome.SUCCEEDED]
    assert job.error_message is None


def test_permanent_error_fails_at_once(make_job, drain, fetch):
    job_id = make_job("fail", {"permanent": True, "message": "cannot ever work"}, max_attempts=5)
    drain()
    job, history = fetch(job_id)
    assert (job.status, job.attempts, len(history)) == (JobStatus.FAILED, 1, 1)
    assert job.error_type == "jobs.errors.PermanentError"
