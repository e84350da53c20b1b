"""``jobctl jobs create``: delayed and unique jobs from the command line, run for real in subprocesses."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from jobs import store
from jobs.models import JobStatus


def test_a_delayed_job_is_created_scheduled_with_its_run_at(jobctl, fetch, queued_messages):
    delayed = jobctl("jobs", "create", "test.note", "--args", '{"text": "later"}', "--delay", "1h", "--json")
    assert delayed.returncode == 0, delayed.stderr
    answer = json.loads(delayed.stdout)
    assert (answer["status"], answer["duplicate"]) == ("scheduled", False)
    row, _ = fetch(uuid.UUID(answer["job_id"]))
    assert (row.status, row.args["text"], row.run_at - row.created_at) == (
        JobStatus.SCHEDULED,
        "later",
        dt.timedelta(hours=1),
    )
    assert queued_messages("default.DQ") == 1  # its ID, sent after the commit with the broker's delay

    at = jobctl("jobs", "create", "noop", "--run-at", "2030-01-01T09:00:00+01:00")
    assert at.returncode == 0, at.stderr
    job_id = uuid.UUID(at.stdout.split()[2])
    assert at.stdout.strip() == f"created job {job_id} (scheduled, runs at 2030-01-01T08:00:00+00:00)"
    row, _ = fetch(job_id)
    assert (row.status, row.run_at) == (JobStatus.SCHEDULED, dt.datetime(2030, 1, 1, 8, tzinfo=dt.UTC))


def test_a_unique_key_given_twice_makes_one_job_and_says_duplicate(jobctl, database, queued_messages):
    first = jobctl("jobs", "create", "noop", "--unique-key", "nightly")
    assert first.returncode == 0, first.stderr
    job_id = first.stdout.split()[2]
    assert first.stdout.strip() == f"created job {job_id} (queued)"

    again = jobctl("jobs", "create", "noop", "--unique-key", "nightly")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"duplicate: job {job_id} (queued) already holds key 'nightly'"
    again_json = json.loads(jobctl("jobs", "create", "noop", "--unique-key", "nightly", "--json").stdout)
    assert (again_json["job_id"], again_json["duplicate"]) == (job_id, True)

    with database.readers() as session:
        jobs, _ = store.list_jobs(session, limit=10)
    assert [str(job.id) for job in jobs] == [job_id]
    assert queued_messages() == 1  # the duplicates sent nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["noop", "--args", "{not json"], "error: --args is not JSON: "),
        (["noop", "--args", "[1]"], "error: --args must be a JSON object, not list: [1]"),
        (["noop", "--run-at", "2030-01-01T09:00:00"], "error: --run-at needs a timezone (such as +01:00 or Z): "),
        (["noop", "--run-at", "2030-01-01T09:00Z", "--delay", "30s"], "error: give --run-at or --delay, not both"),
        (["noop", "--delay", "soon"], "error: not a duration (30s, 30m, 2h, 3d, 1w): 'soon'"),
        (["no.such.kind"], "error: unknown job kind: 'no.such.kind'"),
        (["test.internal"], "error: job kind 'test.internal' is internal: only the runner creates it"),
        (["test.note", "--args", '{"raise_after": "maybe"}'], "error: raise_after: "),
    ],
    ids=["bad-json", "not-an-object", "naive-time", "both-times", "bad-delay", "unknown-kind", "internal", "bad-args"],
)
def test_bad_usage_is_one_line_and_exit_2_and_creates_nothing(args, message, jobctl, database):
    result = jobctl("jobs", "create", *args)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    with database.readers() as session:
        assert store.list_jobs(session, limit=10)[0] == []
