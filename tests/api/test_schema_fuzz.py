"""Bad input everywhere: Schemathesis fuzzes every route of the live API (real uvicorn, real
database and Redis) from its own OpenAPI document: no 5xx, every answer fits the schema, invalid
input and invalid credentials are refused.

One check is left out: "schema-valid data must be accepted". A JSON schema cannot say which IDs
exist, which strings are cursors this API handed out, or which SKU is taken; those 404/409/422
answers are declared, and the other checks still hold them to the schema."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.worker.processes import wait_until
from worker import devmode

#: Examples per route; bounded so the normal test run stays short.
EXAMPLES_PER_ROUTE = 25
API_TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def live_api(tmp_path_factory, database_url, redis_url):
    """``jobctl api`` in a subprocess against the test database and Redis."""
    port = devmode.free_port()
    env = {
        **os.environ,
        "JOBRUNNER_DATABASE_URL": database_url,
        "JOBRUNNER_BROKER_URL": redis_url,
        "JOBRUNNER_STORAGE_DIR": str(tmp_path_factory.mktemp("uploads")),
        "JOBRUNNER_MAX_UPLOAD_BYTES": "100000",
        "JOBRUNNER_JOB_MODULES": "tests.kinds",
    }
    env["JOBRUNNER_API_TOKEN"] = API_TOKEN  # so the fuzzer's checks of authentication hold too
    log = tmp_path_factory.mktemp("api") / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "api", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None and pytest.fail(f"the API exited: {log.read_text()}")

    try:
        wait_until(healthy, timeout=60, what="the API to answer")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_no_route_answers_5xx_or_outside_its_schema(live_api):
    # Schemathesis's pytest plugin does not run on this pytest; its strategies, driven by
    # Hypothesis here, do the same work.
    schema = schemathesis.openapi.from_url(f"{live_api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_ROUTE, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case):
            case.call_and_validate(
                base_url=live_api,
                headers={"Authorization": f"Bearer {API_TOKEN}"},
                excluded_checks=[positive_data_acceptance],
            )

        check()
