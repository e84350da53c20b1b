"""The API host of the bed: the real app, in process, posting ``N`` ``test.note`` jobs to itself
through HTTP (``POST /jobs``) and printing each answer's job ID and status. Run inside the ``api``
namespace with the bed's settings in the environment: ``python -m tests.hosts.api_host N``."""

from __future__ import annotations

import sys

from fastapi.testclient import TestClient

from api.app import create_app
from jobs.config import get_settings


def main() -> int:
    count = int(sys.argv[1])
    with TestClient(create_app(get_settings())) as client:
        for number in range(count):
            response = client.post("/jobs", json={"kind": "test.note", "args": {"text": str(number)}})
            response.raise_for_status()
            print(response.json()["job_id"], response.json()["status"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
