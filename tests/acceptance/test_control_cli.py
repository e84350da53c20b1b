"""``jobctl cancel`` and ``jobctl queues``, run for real in subprocesses."""

from __future__ import annotations

import json
import uuid

import pytest

from jobs.models import JobStatus


def test_cancel_by_queue_with_a_dry_run_first_and_named_jobs_reported(jobctl, make_job, fetch):
    waiting = [make_job("test.elsewhere") for _ in range(2)]
    other = make_job("noop")

    dry = jobctl("cancel", "--queue", "control", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert all(str(job_id) in dry.stdout for job_id in waiting) and str(other) not in dry.stdout
    assert "dry run: nothing was changed; 2 job(s) would be cancelled" in dry.stdout
    assert {fetch(job_id)[0].status for job_id in waiting} == {JobStatus.QUEUED}

    done = jobctl("cancel", "--queue", "control", "--reason", "cleanup", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert sorted(summary["cancelled"]) == sorted(map(str, waiting)) and summary["stopping"] == []
    assert {(fetch(job_id)[0].status, fetch(job_id)[0].cancel_reason) for job_id in waiting} == {
        (JobStatus.CANCELLED, "cleanup")
    }

    missing = uuid.uuid4()
    again = jobctl("cancel", str(waiting[0]), str(missing), "--yes")
    assert again.returncode == 1
    assert "cancelled 0, stopping 0 (running: they end cancelled within seconds), skipped 1 (finished)" in again.stdout
    assert "missing 1 (no such job)" in again.stdout
    assert fetch(other)[0].status == JobStatus.QUEUED


@pytest.mark.brokers  # the resume (or replay) sends the waiting jobs to the broker
def test_queues_pause_list_and_resume(jobctl, make_job):
    make_job("test.elsewhere")

    assert jobctl("queues", "pause", "control", "--reason", "deploy").stdout.strip() == "queue control paused"
    listed = json.loads(jobctl("queues", "list", "--json").stdout)
    control = next(queue for queue in listed if queue["name"] == "control")
    assert (control["paused"], control["pause_reason"], control["counts"]) == (True, "deploy", {"queued": 1})

    resumed = jobctl("queues", "resume", "control")
    assert resumed.stdout.strip() == "queue control resumed; 1 waiting job(s) sent to the workers"
    unknown = jobctl("queues", "pause", "no-such-queue")
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1,
        "error: no queue 'no-such-queue': no job kind uses it and no job is in it",
    )
