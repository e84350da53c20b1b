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
        with httpx.Client(base_url=stack.api_url, timeout=60) as client:
            imported = _import_file(client, console, rows)
            jobs = _post_jobs(client, console)
            states = _wait_for(client, console, jobs, "running the jobs")
            _summarise(console, client, states, stack.env["JOBRUNNER_DATABASE_URL"])
    console.print("demo finished; processes stopped.")
    return 0 if imported and _as_expected(states) else 1


def demo_csv(rows: int) -> bytes:
    """A customer CSV with ``rows`` data rows; every 1,000th has a missing field (a bad row)."""
    lines = ["name,email,quantity"]
    for n in range(1, rows + 1):
        if n % 1000 == 500:
            lines.append(f"Customer {n},customer{n}@example.com")  # one field short
        else:
            lines.append(f"  Customer {n} ,Customer{n}@Example.COM,{n % 50}")
    return ("\n".join(lines) + "\n").encode()


def _import_file(client: httpx.Client, console: Console, rows: int) -> dict | None:
    """Upload a generated CSV and wait for its import; returns the file's final state."""
    body = demo_csv(rows)
    response = client.post("/files", files={"file": ("customers.csv", body, "text/csv")})
    response.raise_for_status()
    file_id = response.json()["file_id"]
    console.print(f"uploaded customers.csv ({len(body):,} bytes, {rows:,} rows): file {file_id}")
    deadline = time.monotonic() + WAIT_SECONDS
    with Progress(console=console) as progress:
        task = progress.add_task("importing the CSV", total=None)
        while time.monotonic() < deadline:
            state = client.get(f"/files/{file_id}").json()
            if state["status"] in ("processed", "failed"):
                progress.update(task, total=1, completed=1)
                break
            time.sleep(0.2)
    table = Table(title="file import")
    for column in ("status", "rows", "imported", "rejected", "first errors"):
        table.add_column(column)
    errors = "; ".join(f"row {e['row']}: {e['reason']}" for e in state["row_errors"][:3])
    table.add_row(state["status"], str(state["rows_total"]), str(state["rows_imported"]),
                  str(state["rows_rejected"]), errors)
    console.print(table)
    return state if state["status"] == "processed" else None


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


def _all_jobs(client: httpx.Client) -> Iterable[dict]:
    cursor = None
    while True:
        page = client.get("/jobs", params={"limit": 500, **({"cursor": cursor} if cursor else {})}).json()
        yield from page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return


def _summarise(console: Console, client: httpx.Client, states: dict[uuid.UUID, dict], database_url: str) -> None:
    counts = collections.Counter((job["kind"], job["status"]) for job in _all_jobs(client))
    table = Table(title="all jobs by kind and status")
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



