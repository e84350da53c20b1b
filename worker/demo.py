"""``jobctl demo``: start the dev stack, then drive the pipeline over HTTP as a user would."""

from __future__ import annotations

import collections
import shlex
import time
import uuid
from collections.abc import Iterable
from typing import Any

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
#: A JSON object the API answered.
Json = dict[str, Any]


def run(*, rows: int, port: int, console: Console) -> int:
    """Run the demo; returns the exit code (0 when everything ended as expected)."""
    port = port or devmode.free_port()
    console.print(f"[bold]jobrunner demo[/bold]: starting API, worker and a private Redis under {DEMO_DIR}/ …")
    with (
        devmode.DevStack(port=port, threads=4, var_dir=DEMO_DIR, fresh=True) as stack,
        httpx.Client(base_url=stack.api_url, timeout=60) as client,
    ):
        imported = _import_file(client, console, rows)
        batch = _run_batch(client, console, imported["id"]) if imported else None
        jobs = _post_jobs(client, console)
        event_jobs, product_id = _post_events(client, console)
        states = _wait_for(client, console, {**jobs, **event_jobs}, "running the jobs and the event handlers")
        _show_projections(client, console, product_id)
        _summarise(console, client, states, stack.env["JOBRUNNER_DATABASE_URL"])
    console.print("demo finished; processes stopped.")
    return 0 if batch in ("completed", "completed_with_errors") and _as_expected(states) else 1


def demo_csv(rows: int) -> bytes:
    """A customer CSV with ``rows`` data rows: every 1,000th from the 50th misses a field (a bad row
    for the import), every 1,000th from the 25th has a bad email (a failed record for the batch)."""
    lines = ["name,email,quantity"]
    for n in range(1, rows + 1):
        if n % 1000 == 50:
            lines.append(f"Customer {n},customer{n}@example.com")  # one field short
        elif n % 1000 == 25:
            lines.append(f"Customer {n},not-an-email,{n % 50}")
        else:
            lines.append(f"  Customer {n} ,Customer{n}@Example.COM,{n % 50}")
    return ("\n".join(lines) + "\n").encode()


def _import_file(client: httpx.Client, console: Console, rows: int) -> Json | None:
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
    table.add_row(
        state["status"], str(state["rows_total"]), str(state["rows_imported"]), str(state["rows_rejected"]), errors
    )
    console.print(table)
    return state if state["status"] == "processed" else None


def _run_batch(client: httpx.Client, console: Console, file_id: str) -> str | None:
    """Validate the imported records in chunks of 1,000; show progress and the result."""
    response = client.post("/batches", json={"operation": "validate", "file_id": file_id, "chunk_size": 1000})
    response.raise_for_status()
    batch_id = response.json()["batch_id"]
    deadline = time.monotonic() + WAIT_SECONDS
    with Progress(console=console) as progress:
        task = progress.add_task("validating the records (batch)", total=100)
        while time.monotonic() < deadline:
            batch = client.get(f"/batches/{batch_id}").json()
            progress.update(task, completed=batch["percent"])
            if batch["status"] in ("completed", "completed_with_errors", "cancelled", "failed"):
                break
            time.sleep(0.2)
    table = Table(title=f"batch {batch_id}")
    for column in ("status", "records", "processed", "failed", "chunks", "records/s", "a failed record"):
        table.add_column(column)
    sample = batch["failed_sample"][0] if batch["failed_sample"] else None
    table.add_row(
        batch["status"],
        str(batch["total"]),
        str(batch["processed"]),
        str(batch["failed"]),
        f"{batch['chunks_done']}/{batch['chunks_total']}",
        f"{batch['records_per_second'] or 0:,.0f}",
        f"#{sample['record_id']}: {'; '.join(sample['errors'])}" if sample else "",
    )
    console.print(table)
    status: str = batch["status"]
    return status


#: Demo events: users joining orgs, and orders against one product (the last one too big).
DEMO_ORGS = ("acme", "globex", "initech")
DEMO_USERS = 240
DEMO_ORDERS = 60


def _post_events(client: httpx.Client, console: Console) -> tuple[dict[uuid.UUID, str], str]:
    """Create a product, then post domain events in lists: their handler jobs run on the workers.
    Returns the handler jobs (labelled) and the product's ID."""
    product = client.post("/products", json={"sku": "DEMO-WIDGET", "inventory": 100})
    product.raise_for_status()
    product_id = product.json()["id"]
    events: list[Json] = [
        {
            "type": "user_registered",
            "payload": {
                "org_id": DEMO_ORGS[n % len(DEMO_ORGS)],
                "user_id": f"user-{n}",
                "email": f"user{n}@example.com",
            },
        }
        for n in range(DEMO_USERS)
    ]
    events += [
        {"type": "order_created", "payload": {"order_id": f"order-{n}", "product_id": product_id, "quantity": 1}}
        for n in range(DEMO_ORDERS)
    ]
    events.append(
        {"type": "order_created", "payload": {"order_id": "order-too-big", "product_id": product_id, "quantity": 1000}}
    )
    jobs: dict[uuid.UUID, str] = {}
    for start in range(0, len(events), 100):
        chunk = events[start : start + 100]
        response = client.post("/events", json=chunk)
        response.raise_for_status()
        for event, accepted in zip(chunk, response.json(), strict=True):  # one answer per event
            label = "too-big" if event["payload"].get("order_id") == "order-too-big" else "event"
            jobs.update({uuid.UUID(job_id): label for job_id in accepted["job_ids"]})
    console.print(
        f"posted {len(events)} domain events in lists of 100 ({DEMO_USERS} users joining "
        f"{len(DEMO_ORGS)} orgs, {DEMO_ORDERS + 1} orders, the last beyond the inventory): "
        f"{len(jobs)} handler jobs"
    )
    return jobs, product_id


def _show_projections(client: httpx.Client, console: Console, product_id: str) -> None:
    table = Table(title="projections, updated once per event by the handlers")
    for column in ("projection", "value"):
        table.add_column(column)
    for org in DEMO_ORGS:
        stats = client.get(f"/orgs/{org}/stats").json()
        table.add_row(f"org {org}", f"{stats['user_count']} users")
    product = client.get(f"/products/{product_id}").json()
    table.add_row(
        f"product {product['sku']}",
        f"inventory {product['inventory']} of {product['initial_inventory']}, {product['sales_count']} sales",
    )
    console.print(table)


def _post_jobs(client: httpx.Client, console: Console) -> dict[uuid.UUID, str]:
    """Post noop jobs, jobs that fail once and then succeed, and one that fails for good."""
    posted: dict[uuid.UUID, str] = {}
    plan: list[tuple[str, Json, str]] = [("noop", {}, "noop")] * 200
    plan += [("fail", {"fail_times": 1, "message": "flaky, once"}, "flaky")] * 20
    plan.append(("fail", {"permanent": True, "message": "the demo's broken job"}, "broken"))
    for kind, args, label in plan:
        response = client.post("/jobs", json={"kind": kind, "args": args})
        response.raise_for_status()
        posted[uuid.UUID(response.json()["job_id"])] = label
    console.print(f"posted {len(posted)} jobs: 200 noop, 20 that fail once then succeed, 1 that fails for good")
    return posted


def _wait_for(client: httpx.Client, console: Console, jobs: dict[uuid.UUID, str], title: str) -> dict[uuid.UUID, Json]:
    """Poll each job until it is terminal (bounded), with a progress bar."""
    states: dict[uuid.UUID, Json] = {}
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


def _all_jobs(client: httpx.Client) -> Iterable[Json]:
    cursor = None
    while True:
        page = client.get("/jobs", params={"limit": 500, **({"cursor": cursor} if cursor else {})}).json()
        yield from page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return


def _summarise(console: Console, client: httpx.Client, states: dict[uuid.UUID, Json], database_url: str) -> None:
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
        # The demo's Redis stops with it: replay while `jobctl dev` runs the stack on its database
        # (under ./var, so its broker is var/redis.sock), so the replayed job is sent and run at once.
        env = devmode.cli_env(database_url, devmode.dev_broker_url())
        console.print("replay it: start the stack on the demo's database, then replay from another shell:")
        console.print(f"  JOBRUNNER_DATABASE_URL={shlex.quote(database_url)} jobctl dev", markup=False, soft_wrap=True)
        console.print(f"  {env} jobctl replay {job_id} --reason 'fixed it'", markup=False, soft_wrap=True)


def _failed(states: Iterable[Json]) -> list[tuple[str, Json]]:
    return [(s["id"], s) for s in states if s["status"] == "failed"]


def _as_expected(states: dict[uuid.UUID, Json]) -> bool:
    want = {"noop": "succeeded", "flaky": "succeeded", "broken": "failed", "event": "succeeded", "too-big": "failed"}
    return all(s["status"] == want[s["label"]] for s in states.values())
