"""JSON log lines with the job's context, and tracing as a no-op without the ``otel`` extra."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

from jobs.observe import logs


def test_a_json_line_carries_the_job_context_and_the_call_extra_wins():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.json_formatter())
    handler.addFilter(logs.JobContextFilter())
    logger = logging.getLogger("tests.observe.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = logs.job_context.set({"job_id": "j-1", "kind": "noop", "queue": "default", "attempt": 2})
        logger.warning("inside %s", "a job", extra={"kind": "given"})
        logs.job_context.reset(token)
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "inside a job" and inside["level"] == "WARNING"
    assert inside["logger"] == "tests.observe.json" and inside["time"].endswith("+00:00")
    assert (inside["job_id"], inside["attempt"], inside["kind"], inside["queue"]) == ("j-1", 2, "given", "default")
    assert "job_id" not in outside


def test_tracing_is_a_no_op_without_the_extra():
    code = (
        "import sys\n"
        # As if the extra were not installed (FastAPI itself may need opentelemetry-api).
        "sys.modules['opentelemetry.sdk'] = None\n"
        "from fastapi import FastAPI\n"
        "from api import telemetry\n"
        "from jobs.observe import tracecontext, tracing\n"
        "import worker.middleware\n"
        "on = tracing.configure_from_environment('test', {'OTEL_TRACES_EXPORTER': 'console'})\n"
        "telemetry.install(FastAPI())\n"
        "print(tracing.installed(), on, tracecontext.current())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["False", "False", "None"]
