"""The shop's routes enqueue in their own transactions; its sync and async kinds run through
jobrunner's worker middleware (in process, ``worker.testing``)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from jobs import store
from jobs.models import JobStatus
from worker.testing import InProcessJobs


def test_a_sync_route_enqueues_the_receipt_job_and_the_sync_kind_sends_it(shop: TestClient, jobrunner: InProcessJobs):
    answer = shop.post("/orders", json={"reference": "A-1", "sku": "tea", "quantity": 2})
    assert answer.status_code == 202, answer.text
    enqueued = jobrunner.enqueued_jobs(kind="shop.send_receipt")
    assert [str(job.id) for job in enqueued] == [answer.json()["job_id"]]
    assert enqueued[0].args == {"order_id": answer.json()["order_id"]}

    jobrunner.run_enqueued()

    assert jobrunner.enqueued_jobs(kind="shop.send_receipt")[0].status == JobStatus.SUCCEEDED
    assert shop.get(f"/orders/{answer.json()['order_id']}").json()["receipt_sent"] is True


def test_an_async_route_enqueues_after_its_commit_and_the_async_kind_writes_the_invoice(
    shop: TestClient, jobrunner: InProcessJobs
):
    answer = shop.post("/async/orders", json={"reference": "B-1", "sku": "mugs", "quantity": 3})
    assert answer.status_code == 202, answer.text
    assert [str(job.id) for job in jobrunner.enqueued_jobs()] == [answer.json()["job_id"]]

    jobrunner.run_enqueued()

    (job,) = jobrunner.enqueued_jobs(kind="shop.render_invoice")
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    order = shop.get(f"/orders/{answer.json()['order_id']}").json()
    assert order["invoice"] == f"INVOICE order {order['id']}: 3 x mugs"


def test_a_rolled_back_async_transaction_sends_nothing_and_leaves_no_job(shop: TestClient, jobrunner: InProcessJobs):
    assert shop.post("/async/orders", json={"reference": "C-1", "sku": "tea", "quantity": 1}).status_code == 202
    second = shop.post("/async/orders", json={"reference": "C-1", "sku": "tea", "quantity": 1})  # same reference
    assert second.status_code == 409
    assert len(jobrunner.enqueued_jobs()) == 1
    with jobrunner.database.readers() as session:
        assert store.count_jobs(session) == [("shop.render_invoice", "queued", 1)]
