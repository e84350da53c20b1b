"""``/schedules`` over HTTP and ``jobctl schedules``, on the real app and the test database."""

from __future__ import annotations

from sqlalchemy import func, select

from jobs import models
from tests.acceptance.conftest import jobctl  # noqa: F401  (a fixture)


def test_a_schedule_is_added_listed_paused_resumed_run_and_deleted(client, database):
    body = {"name": "nightly", "kind": "noop", "cron": "0 3 * * *", "timezone": "Europe/Paris"}
    created = client.post("/schedules", json=body)
    assert created.status_code == 201
    assert created.json()["paused"] is False and created.json()["declared"] is False
    assert client.post("/schedules", json=body).status_code == 409
    assert [s["name"] for s in client.get("/schedules").json()] == ["nightly"]

    assert client.post("/schedules/nightly/pause").json()["paused"] is True
    assert client.post("/schedules/nightly/resume").json()["paused"] is False
    run = client.post("/schedules/nightly/run")
    assert run.status_code == 202 and run.json()["status"] == "queued"
    assert client.get(f"/jobs/{run.json()['job_id']}").json()["kind"] == "noop"

    assert client.delete("/schedules/nightly").status_code == 204
    assert client.get("/schedules").json() == []
    assert client.post("/schedules/nightly/pause").status_code == 404
    with database.readers() as session:  # its job stays
        assert session.scalar(select(func.count()).select_from(models.Job)) == 1


def test_a_schedule_needs_one_valid_timing_and_a_public_kind(client):
    base = {"name": "s", "kind": "noop"}
    for bad in (
        base,
        {**base, "cron": "0 3 * * *", "every_seconds": 60},
        {**base, "cron": "every day"},
        {**base, "every_seconds": 0.01},
        {**base, "cron": "0 3 * * *", "timezone": "Nowhere/Land"},
        {**base, "kind": "test.internal", "every_seconds": 60},
        {**base, "kind": "test.note", "every_seconds": 60, "args": {"text": 5}},
    ):
        assert client.post("/schedules", json=bad).status_code == 422, bad
    assert client.get("/schedules").json() == []


def test_jobctl_schedules_pauses_lists_and_runs(client, jobctl):  # noqa: F811
    # Few commands: each is a process start (the HTTP test above covers the rest of the behaviour).
    client.post("/schedules", json={"name": "tick", "kind": "noop", "every_seconds": 3600})
    assert jobctl("schedules", "pause", "tick").returncode == 0
    listed = jobctl("schedules", "list")
    assert listed.returncode == 0
    (row,) = [line.replace("│", " ").split() for line in listed.stdout.splitlines() if " tick " in line]
    assert row[:6] == ["tick", "noop", "every", "3600", "s", "paused"]
    ran = jobctl("schedules", "run", "tick", "--json")
    assert ran.returncode == 0 and '"status": "queued"' in ran.stdout
