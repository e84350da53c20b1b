"""The fleet seen from two API processes (real uvicorn) while two worker processes run jobs that
succeed, retry, fail, die under ``kill -9`` and are replayed: each scrape equals what the database
says, no counter goes down when an API restarts, and the workers' JSON log lines carry the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobs import db, models, store
from tests.observe.scrape import by_name, expected_counters, nonzero, parse, scraped_counters
from tests.servers import free_port
from tests.worker.processes import wait_until

pytestmark = pytest.mark.usefixtures("invariants_hold")


class ApiProcess:
    """``uvicorn api.main:app`` on a port of its own, logging to a file."""

    def __init__(self, log_dir: Path, name: str, **env: str) -> None:
        self.env = {**os.environ, **env}
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start it (:meth:`wait` waits until it answers)."""
        command = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def wait(self) -> None:
        wait_until(self._healthy, timeout=60, what=f"the API on port {self.port} (log: {self.log_path})")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def scrape(self) -> dict:
        answer = httpx.get(f"{self.url}/metrics", timeout=10)
        assert answer.status_code == 200, answer.text
        return parse(answer.text)


@pytest.fixture
def apis(tmp_path: Path, database: db.Database) -> Iterator[list[ApiProcess]]:
    """Two API processes, started (the test waits for them: they boot while its workers do)."""
    started = [ApiProcess(tmp_path, "api-a"), ApiProcess(tmp_path, "api-b", JOBRUNNER_LOG_FORMAT="json")]
    yield started
    for api in started:
        api.stop()


def _statuses(database: db.Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    with database.readers() as session:
        return {job.id: job.status for job in (session.get(models.Job, job_id) for job_id in ids) if job}


def _create(database: db.Database, kind: str, args: dict) -> uuid.UUID:
    with db.session_scope(database.sessions) as session:
        return store.create_job(session, kind, args).id


def test_two_apis_answer_for_two_workers_exactly_across_restarts(apis, workers, database):
    api_a, api_b = apis
    worker = workers(processes=2, threads=2, JOBRUNNER_LOG_FORMAT="json")
    for api in apis:
        api.wait()
    ids = [
        uuid.UUID(httpx.post(f"{api_a.url}/jobs", json={"kind": "noop", "args": {}}).json()["job_id"]) for _ in range(4)
    ]
    flaky = httpx.post(f"{api_b.url}/jobs", json={"kind": "fail", "args": {"fail_times": 1}}).json()["job_id"]
    permanent = httpx.post(f"{api_b.url}/jobs", json={"kind": "fail", "args": {"permanent": True}}).json()["job_id"]
    doomed = _create(database, "test.wait", {"seconds": 1.0})
    ids += [uuid.UUID(flaky), uuid.UUID(permanent), doomed]

    # kill -9 the worker process running `doomed`: its attempt is lost, the job runs again.
    def running_on() -> int | None:
        with database.readers() as session:
            job = session.get(models.Job, doomed)
            return int(job.worker_id.rsplit(":", 1)[1]) if job and job.status == "running" else None

    os.kill(wait_until(running_on, what="the job to be killed to run"), signal.SIGKILL)
    # Created after the kill, so that no other job than `doomed` can die with that process.
    logged = _create(database, "test.log_then_fail", {})
    ids.append(logged)
    wait_until(lambda: _statuses(database, ids)[uuid.UUID(permanent)] == "failed", what="the permanent failure")
    assert httpx.post(f"{api_a.url}/jobs/{permanent}/replay", json={"reason": "again"}).status_code == 202
    terminal = {status.value for status in models.TERMINAL}
    wait_until(lambda: set(_statuses(database, ids).values()) <= terminal, what="every job to finish")
    wait_until(lambda: _statuses(database, [doomed]) == {doomed: "succeeded"}, what="the killed job to succeed")

    expected = nonzero(expected_counters(database))
    assert expected["lost"] == {("test.wait",): 1}
    assert expected["retries"][("fail",)] == 1 and expected["replayed"][("fail",)] == 1
    before = api_a.scrape()
    assert nonzero(scraped_counters(before)) == expected
    assert nonzero(scraped_counters(api_b.scrape())) == expected
    assert by_name(before, "jobrunner_workers_alive")[()] >= 1  # the one not killed beats

    api_a.stop()
    api_a.start()
    api_a.wait()
    after = api_a.scrape()
    for name in (
        "jobrunner_attempts_total",
        "jobrunner_jobs_finished_total",
        "jobrunner_attempt_duration_seconds_count",
    ):
        for labels, value in by_name(before, name).items():
            assert by_name(after, name)[labels] >= value, (name, labels)
    assert nonzero(scraped_counters(after)) == expected
    worker.stop()

    # The worker logged JSON, one object per line; the failing job's lines carry its id and attempt,
    # its handler's own line too.
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("job_id") == str(logged)]
    own = [(line["attempt"], line["logger"]) for line in mine if line["message"] == "about to fail"]
    assert own == [(1, "tests.kinds"), (2, "tests.kinds")], mine
    final = [line for line in mine if line["level"] == "ERROR"]
    assert len(final) == 1 and final[0]["attempt"] == 2 and final[0]["kind"] == "test.log_then_fail", mine
    assert {"time", "level", "logger", "message", "queue"} <= set(final[0])
    # The API logs JSON too (uvicorn's own lines included).
    api_lines = [json.loads(line) for line in api_b.log_path.read_text().splitlines() if line.strip()]
    assert any(line["logger"] == "uvicorn.access" and "POST /jobs" in line["message"] for line in api_lines)
