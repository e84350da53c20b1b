"""``jobctl demo``: start the dev stack, then drive the pipeline over HTTP as a user would."""

from __future__ import annotations

import collections
import socket
import time
import uuid
from collections.abc import Iterable

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from jobs.config import VAR_DIR
from worker import devmode

#: Where the demo keeps its database, Redis socket and logs (wiped at each run).
DEMO_DIR = VAR_DIR / "demo"
#: Longest the demo waits for its jobs.
WAIT_SECONDS = 300.0
_TERMINAL = {"succeeded", "failed", "cancelled"}


def run(*, rows: int, port: int, console: Console) -> int:
    """Run the demo; returns the exit code (0 when everything ended as expected)."""
    port = port or _free_port()
    console.print(f"[bold]jobrunner demo[/bold]: starting API, worker and a private Redis under {DEMO_DIR}/ …")
    with devmode.DevStack(port=port, threads=4, var_dir=DEMO_DIR, fresh=True) as stack:
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            jobs = _post_jobs(client, console)
            states = _wait_for(client, console, jobs, "running the jobs")
            _summarise(console, states, stack.env["JOBRUNNER_DATABASE_URL"])
    console.print("demo finished; processes stopped.")
    return 0 if _as_expected(states) else 1


def _post_jobs(client: httpx.Client, console: Console) -> dict[uuid.UUID, str]:
    """Post noop jobs, jobs that fail once and then succeed, and one that fails for good."""
    posted: dict[uuid.UUID, str] = {}
    plan = [("noop", {}, "noop")] * 200 + [("fail", {"fail_times": 1, "message": "flaky, once"}, "flaky")] * 20
    plan.append(("fail", {"permanent": True, "message": "the demo's broken job"}, "broken"))
    for kind, args, label in plan:
        response = client.post("/jobs", json={"kind": kind, "args": args})
        response.raise_for_status()
        posted[uuid.UUID(response.json()["job_id"])] = label
    console.print(f"posted {len(posted)} jobs: 200 noop, 20 that fail once then succeed, 1 that fails for good")
    return posted


def _wait_for(client: httpx.Client, console: Console, jobs: dict[uuid.UUID, str], title: str) -> dict[uuid.UUID, dict]:
    """Poll each job until it is terminal (bounded), with a progress bar."""
    states: dict[uuid.UUID, dict] = {}
    pending = list(jobs)
    deadline = time.monotonic() + WAIT_SECONDS
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task(title, total=len(jobs))
        while pending and time.monotonic() < deadline:
            still = []
            for job_id in pending:
                job = client.get(f"/jobs/{job_id}").json()
                if job["status"] in _TERMINAL:
                    states[job_id] = {**job, "label": jobs[job_id]}
                    progress.advance(task)
                else:
                    still.append(job_id)
            pending = still
            if pending:
                time.sleep(0.2)
    for job_id in pending:
        states[job_id] = {**client.get(f"/jobs/{job_id}").json(), "label": jobs[job_id]}
    return states


def _summarise(console: Console, states: dict[uuid.UUID, dict], database_url: str) -> None:
    counts = collections.Counter((s["kind"], s["status"]) for s in states.values())
    table = Table(title="jobs by kind and status")
    for column in ("kind", "status", "jobs"):
        table.add_column(column)
    for (kind, status), count in sorted(counts.items()):
        table.add_row(kind, status, str(count))
    console.print(table)
    retried = sum(1 for s in states.values() if s["label"] == "flaky" and s["attempts"] == 2)
    console.print(f"flaky jobs that succeeded on their 2nd attempt: {retried}")
    for job_id, state in _failed(states.values()):
        console.print(f"failed for good: {job_id} ({state['error_type']}: {state['error_message']})")
        console.print("replay it with:")
        console.print(f"  JOBRUNNER_DATABASE_URL={database_url} jobctl replay {job_id} --reason 'fixed it'", markup=False)


def _failed(states: Iterable[dict]) -> list[tuple[str, dict]]:
    return [(s["id"], s) for s in states if s["status"] == "failed"]


def _as_expected(states: dict[uuid.UUID, dict]) -> bool:
    want = {"noop": "succeeded", "flaky": "succeeded", "broken": "failed"}
    return all(s["status"] == want[s["label"]] for s in states.values())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



