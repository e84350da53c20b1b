"""The API host of the bed: the real app, in process, posting ``N`` ``test.note`` jobs to itself
through HTTP (``POST /jobs``) and printing one line per answer: ``<code> <job ID> <status>`` when the
job was accepted, ``<code> - <Retry-After>`` for a 503 (any other answer ends it with an error). Run
inside the ``api`` namespace with the bed's settings in the environment:
``python -m tests.hosts.api_host N [GATE M]``: with ``GATE`` (a file) and ``M``, it then waits
(at most a minute) for that file to exist and posts ``M`` jobs more, from the same app."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from jobs.config import get_settings

GATE_TIMEOUT_SECONDS = 60.0


def post(client: TestClient, count: int) -> None:
    for number in range(count):
        response = client.post("/jobs", json={"kind": "test.note", "args": {"text": str(number)}})
        if response.status_code == 503:
            print(503, "-", response.headers.get("Retry-After", "-"), flush=True)
            continue
        response.raise_for_status()
        print(response.status_code, response.json()["job_id"], response.json()["status"], flush=True)


def main() -> int:
    count = int(sys.argv[1])
    with TestClient(create_app(get_settings())) as client:
        post(client, count)
        if len(sys.argv) > 2:
            gate, more = Path(sys.argv[2]), int(sys.argv[3])
            deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
            while not gate.exists():
                if time.monotonic() > deadline:
                    raise SystemExit(f"{gate} did not appear within {GATE_TIMEOUT_SECONDS:.0f} s")
                time.sleep(0.05)
            post(client, more)
    return 0


if __name__ == "__main__":
    sys.exit(main())
