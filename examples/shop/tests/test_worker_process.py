"""The shop as deployed: its app sends job IDs to Redis, and one real ``jobctl worker`` process
(``JOBRUNNER_JOB_MODULES=shopapp.kinds``) runs its sync and async kinds against the same database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import jobs
from shopapp.app import create_app
from tests import servers
from tests.worker.processes import WorkerProcess, wait_until

EXAMPLE_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture
def redis_url() -> Iterator[str]:
    server = servers.PrivateRedis()
    try:
        yield server.url
    finally:
        server.close()


def test_one_jobctl_worker_runs_the_shops_sync_and_async_kinds(
    shop_settings: jobs.Settings, shop_database_url: str, redis_url: str, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("JOBRUNNER_BROKER_URL", redis_url)
    pythonpath = os.pathsep.join(filter(None, [str(EXAMPLE_DIR), os.environ.get("PYTHONPATH")]))
    worker = WorkerProcess(tmp_path, threads=2, PYTHONPATH=pythonpath)
    try:
        with TestClient(create_app(database_url=shop_database_url)) as shop:  # the default sender: Redis
            sync_order = shop.post("/orders", json={"reference": "W-1", "sku": "tea", "quantity": 1}).json()
            async_order = shop.post("/async/orders", json={"reference": "W-2", "sku": "cups", "quantity": 6}).json()

            def done() -> bool:
                receipt = shop.get(f"/orders/{sync_order['order_id']}").json()["receipt_sent"]
                invoice = shop.get(f"/orders/{async_order['order_id']}").json()["invoice"]
                return receipt and invoice is not None

            wait_until(done, timeout=60, what=f"the worker to run both jobs; its log:\n{worker.log_path}")
        assert worker.stop() == 0, worker.log()
    finally:
        if worker.alive():
            worker.kill()
